// LD_PRELOAD shim (Linux x86-64): make the CPUID instruction trap (arch_prctl ARCH_SET_CPUID, where the CPU or
// hypervisor offers CPUID faulting: lscpu lists "cpuid_fault") and answer it with the AVX-512, AMX, VNNI and bf16
// bits cleared, so libraries that choose their kernels from CPUID (onnxruntime's MLAS, oneDNN, ATen) run their AVX2
// code: an AVX-512 machine measures what an AVX2-only CPU's kernels do (same cores, clock and caches, so a proxy,
// not a real AVX2 CPU). Built and used by run.sh in this folder.
//
// CPUID faulting is per thread, kept by threads and forks made later and reset by execve (LD_PRELOAD sets it again
// in an exec'd child). A trapped CPUID arrives as SIGSEGV with si_code SI_KERNEL; every other SIGSEGV goes to the
// program's own handler (sigaction and signal are wrapped for SIGSEGV: Python's faulthandler, which pytest enables,
// installs one) or, without one, kills the process as it would have.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>
#include <asm/prctl.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
typedef sighandler_t (*signal_fn)(int, sighandler_t);
static sigaction_fn real_sigaction;
static signal_fn real_signal;
static struct sigaction program_handler;  // the program's SIGSEGV handler: SIG_DFL until it installs one
static volatile long answered;

static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}

static void mask(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  if (leaf == 7 && sub == 0) {
    // EBX: avx512f(16) dq(17) ifma(21) cd(28) bw(30) vl(31)
    r[1] &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 28) | (1u << 30) | (1u << 31));
    // ECX: avx512_vbmi(1) vbmi2(6) vnni(11) bitalg(12) vpopcntdq(14)
    r[2] &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    // EDX: 4vnniw(2) 4fmaps(3) vp2intersect(8) amx_bf16(22) avx512_fp16(23) amx_tile(24) amx_int8(25)
    r[3] &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    // EAX: avx_vnni(4) avx512_bf16(5) amx_fp16(21) avx_ifma(23); EDX: avx_vnni_int8(4) avx_ne_convert(5) avx10(19)
    r[0] &= ~((1u << 4) | (1u << 5) | (1u << 21) | (1u << 23));
    r[3] &= ~((1u << 4) | (1u << 5) | (1u << 19));
  } else if (leaf == 0xd && sub == 0) {
    // XSAVE-supported state: drop opmask/ZMM (bits 5-7) and AMX tiles (17, 18)
    r[0] &= ~((1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18));
  } else if (leaf == 0x1d || leaf == 0x1e || leaf == 0x24) {  // AMX tile and AVX10 information
    r[0] = r[1] = r[2] = r[3] = 0;
  }
}

static void pass_on(int sig, siginfo_t *si, void *context) {
  if (program_handler.sa_flags & SA_SIGINFO) {
    program_handler.sa_sigaction(sig, si, context);
    return;
  }
  if (program_handler.sa_handler == SIG_IGN) return;
  if (program_handler.sa_handler != SIG_DFL) {
    program_handler.sa_handler(sig);
    return;
  }
  struct sigaction dfl;
  memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &dfl, NULL);
  if (si->si_code <= 0) raise(sig);  // sent by kill/raise: deliver it again, now to the default action
  // a real fault: returning runs the faulting instruction again, which now ends the process as it would have
}

static void handler(int sig, siginfo_t *si, void *context) {
  greg_t *regs = ((ucontext_t *)context)->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)regs[REG_RIP];
  // a trapped CPUID is a general-protection fault (SI_KERNEL) at a readable instruction 0F A2
  if (si->si_code != SI_KERNEL || ip[0] != 0x0f || ip[1] != 0xa2) {
    pass_on(sig, si, context);
    return;
  }
  uint32_t leaf = (uint32_t)regs[REG_RAX], sub = (uint32_t)regs[REG_RCX], r[4];
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  real_cpuid(leaf, sub, r);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  mask(leaf, sub, r);
  regs[REG_RAX] = r[0];
  regs[REG_RBX] = r[1];
  regs[REG_RCX] = r[2];
  regs[REG_RDX] = r[3];
  regs[REG_RIP] += 2;
  answered++;
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, act, old);
  if (old) *old = program_handler;
  if (act) program_handler = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler_) {
  if (!real_signal) real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
  if (sig != SIGSEGV) return real_signal(sig, handler_);
  sighandler_t old = (program_handler.sa_flags & SA_SIGINFO) ? SIG_DFL : program_handler.sa_handler;
  memset(&program_handler, 0, sizeof program_handler);
  program_handler.sa_handler = handler_;
  return old;
}

__attribute__((constructor)) static void init(void) {
  real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  real_signal = (signal_fn)dlsym(RTLD_NEXT, "signal");
  program_handler.sa_handler = SIG_DFL;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;  // ONSTACK: faulthandler's stack-overflow reports still work
  real_sigaction(SIGSEGV, &sa, NULL);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    perror("cpuid_mask: this CPU or kernel cannot make CPUID trap (ARCH_SET_CPUID)");
    exit(3);
  }
}

__attribute__((destructor)) static void report(void) {
  if (getenv("CPUID_MASK_VERBOSE")) fprintf(stderr, "cpuid_mask: %ld CPUID calls answered\n", answered);
}
