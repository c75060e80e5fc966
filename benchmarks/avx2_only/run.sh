#!/usr/bin/env bash
# Run a command as if on an AVX2-only CPU: CPUID answers without AVX-512, AMX, VNNI and bf16 (cpuid_mask.c), so
# torch, oneDNN and onnxruntime choose their AVX2 kernels. Usage, from the repository root:
#   bash benchmarks/avx2_only/run.sh python benchmarks/speed.py --precisions 32-true int8 ...
# Needs a C compiler and a CPU that can fault on CPUID (lscpu lists cpuid_fault). A proxy: the same cores running
# AVX2 code, not a real AVX2 CPU (README, "Speed").
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
build="$(mktemp -d)"
trap 'rm -rf "$build"' EXIT
cc -O2 -shared -fPIC -o "$build/cpuid_mask.so" "$here/cpuid_mask.c" -ldl
LD_PRELOAD="$build/cpuid_mask.so${LD_PRELOAD:+:$LD_PRELOAD}" "$@"
