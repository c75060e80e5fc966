#!/usr/bin/env bash
# Run a command as if on an AVX2-only CPU: CPUID answers without AVX-512, AMX, VNNI and bf16 (cpuid_mask.c), so
# torch, oneDNN and onnxruntime choose their AVX2 kernels (and glibc its AVX2 string functions). From the
# repository root:
#   bash benchmarks/avx2_only/run.sh python benchmarks/speed.py --precisions 32-true int8 ...
# Needs a C compiler and a CPU that can fault on CPUID (lscpu lists cpuid_fault). A proxy: the same cores running
# AVX2 code, not a real AVX2 CPU (docs/export-and-speed.md, "Run as on an AVX2-only CPU"; its figures: "Intel Xeon
# as an AVX2-only CPU").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cc -O2 -Wall -shared -fPIC -o "$build/cpuid_mask.so" "$here/cpuid_mask.c" -ldl
# Check the mask before the command: CPUID leaf 7 must now say "no AVX-512F".
printf '#include <cpuid.h>\nint main(void){unsigned a,b,c,d; __cpuid_count(7,0,a,b,c,d); return (b>>16)&1;}\n' \
  > "$build/check.c"
cc -o "$build/check" "$build/check.c"
LD_PRELOAD="$build/cpuid_mask.so" "$build/check" || { echo "avx2_only: CPUID still reports AVX-512" >&2; exit 3; }
export GLIBC_TUNABLES="glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD${GLIBC_TUNABLES:+:$GLIBC_TUNABLES}"
LD_PRELOAD="$build/cpuid_mask.so${LD_PRELOAD:+:$LD_PRELOAD}" "$@"
