// LD_PRELOAD shim (Linux x86-64): make the CPUID instruction trap (arch_prctl ARCH_SET_CPUID, where the CPU or
// hypervisor offers CPUID faulting: the "cpuid_fault" flag) and answer it with the AVX-512, AMX, VNNI and bf16 bits
// cleared, so libraries that choose their kernels from CPUID (onnxruntime's MLAS, oneDNN, ATen) run their AVX2
// code: an AVX-512 machine measures what an AVX2-only CPU's kernels do (same cores, clock and caches, so a proxy,
// not a real AVX2 CPU). Built and used by run.sh in this folder.
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <ucontext.h>
#include <unistd.h>
#include <dlfcn.h>
#include <sys/syscall.h>
#include <asm/prctl.h>

// A program may install its own SIGSEGV handler later (Python's faulthandler, which pytest enables): sigaction and
// signal are wrapped so that ours stays installed and theirs gets every fault that is not a CPUID.
typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static struct sigaction program_handler;  // SIG_DFL until the program installs one
static long answered;
static void real_cpuid(uint32_t leaf, uint32_t sub, uint32_t r[4]) {
  __asm__ volatile("cpuid" : "=a"(r[0]), "=b"(r[1]), "=c"(r[2]), "=d"(r[3]) : "a"(leaf), "c"(sub));
}
static void handler(int sig, siginfo_t *si, void *ctx_) {
  ucontext_t *ctx = ctx_;
  greg_t *g = ctx->uc_mcontext.gregs;
  unsigned char *ip = (unsigned char *)g[REG_RIP];
  if (!(ip[0] == 0x0f && ip[1] == 0xa2)) {  // a real fault: the program's handler, or the default (a crash)
    if (program_handler.sa_flags & SA_SIGINFO) { program_handler.sa_sigaction(sig, si, ctx_); return; }
    if (program_handler.sa_handler != SIG_DFL && program_handler.sa_handler != SIG_IGN) {
      program_handler.sa_handler(sig); return;
    }
    struct sigaction dfl; memset(&dfl, 0, sizeof dfl); dfl.sa_handler = SIG_DFL;
    ((sigaction_fn)dlsym(RTLD_NEXT, "sigaction"))(SIGSEGV, &dfl, NULL);
    return;  // the faulting instruction runs again and now crashes as it would have
  }
  uint32_t leaf = g[REG_RAX], sub = g[REG_RCX], r[4];
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 1);
  real_cpuid(leaf, sub, r);
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0);
  if (leaf == 7 && sub == 0) {
    // EBX: avx512f(16) dq(17) ifma(21) cd(28) bw(30) vl(31)
    r[1] &= ~((1u<<16)|(1u<<17)|(1u<<21)|(1u<<28)|(1u<<30)|(1u<<31));
    // ECX: avx512_vbmi(1) vbmi2(6) vnni(11) bitalg(12) vpopcntdq(14)
    r[2] &= ~((1u<<1)|(1u<<6)|(1u<<11)|(1u<<12)|(1u<<14));
    // EDX: avx512_4vnniw(2) 4fmaps(3) vp2intersect(8) amx_bf16(22) avx512_fp16(23) amx_tile(24) amx_int8(25)
    r[3] &= ~((1u<<2)|(1u<<3)|(1u<<8)|(1u<<22)|(1u<<23)|(1u<<24)|(1u<<25));
  } else if (leaf == 7 && sub == 1) {
    // EAX: avx_vnni(4) avx512_bf16(5) amx_fp16(21) avx_ifma(23); EDX: avx_vnni_int8(4) avx_ne_convert(5) avx10(19)
    r[0] &= ~((1u<<4)|(1u<<5)|(1u<<21)|(1u<<23));
    r[3] &= ~((1u<<4)|(1u<<5)|(1u<<19));
  } else if (leaf == 0xd && sub == 0) {
    // XSAVE-supported state: drop opmask/ZMM (bits 5-7) and AMX tile (17,18)
    r[0] &= ~((1u<<5)|(1u<<6)|(1u<<7)|(1u<<17)|(1u<<18));
  } else if (leaf == 0x24 || leaf == 0x1d || leaf == 0x1e) {
    r[0] = r[1] = r[2] = r[3] = 0;
  }
  g[REG_RAX] = r[0]; g[REG_RBX] = r[1]; g[REG_RCX] = r[2]; g[REG_RDX] = r[3];
  g[REG_RIP] += 2;
  answered++;
}
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  static sigaction_fn real;
  if (!real) real = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real(sig, act, old);
  if (old) *old = program_handler;
  if (act) program_handler = *act;
  return 0;
}

sighandler_t signal(int sig, sighandler_t handler_) {
  struct sigaction act, old;
  memset(&act, 0, sizeof act);
  act.sa_handler = handler_;
  if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
  return old.sa_handler;
}

__attribute__((constructor)) static void init(void) {
  program_handler.sa_handler = SIG_DFL;
  struct sigaction sa; memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = handler; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  ((sigaction_fn)dlsym(RTLD_NEXT, "sigaction"))(SIGSEGV, &sa, NULL);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    perror("cpuid_mask: this CPU or kernel cannot make CPUID trap (ARCH_SET_CPUID)");
    exit(3);
  }
  if (getenv("CPUID_MASK_VERBOSE")) fprintf(stderr, "cpuid_mask: CPUID now traps\n");
}
__attribute__((destructor)) static void fini(void) {
  if (getenv("CPUID_MASK_VERBOSE")) fprintf(stderr, "cpuid_mask: %ld CPUID calls answered\n", answered);
}
