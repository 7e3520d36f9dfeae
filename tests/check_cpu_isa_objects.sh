#!/bin/sh
# Checks the per-instruction-set objects of the CPU kernels (backends/kernels/cpu_isa.h):
#  1. each defines no symbol another object could also define (every global or weak name carries
#     its variant's tag), so the linker can never hand a v4 copy of an Eigen or std function to
#     baseline code;
#  2. each holds the vector code of its instruction set: v3 fused multiply-adds on ymm registers,
#     v4 on zmm, baseline no VEX or EVEX instruction at all.
# Usage: check_cpu_isa_objects.sh variant=object.o[,object.o...] ...  (each object checked alone)
set -eu
status=0
for arg in "$@"; do
  variant=${arg%%=*}
  for object in $(echo "${arg#*=}" | tr ',' ' '); do
    shared=$(nm --defined-only "$object" | awk '$2 ~ /^[TWVuDBRiv]$/ {print $3}' |
             grep -v "isa_$variant" | grep -v '^DW\.ref\.__gxx_personality_v0$' || true)
    if [ -n "$shared" ]; then
      echo "FAIL $variant: symbols without the variant tag isa_$variant (the linker may merge them):"
      echo "$shared" | c++filt | sed 's/^/  /'
      status=1
    fi
    code=$(objdump -d --no-show-raw-insn "$object")
    case $variant in
      baseline) vector=$(echo "$code" | grep -cE '%[yz]mm|[[:space:]]v[a-z0-9]+[[:space:]]' || true); want=0 ;;
      v3) vector=$(echo "$code" | grep -cE 'vfmadd[0-9]+ps[[:space:]].*%ymm' || true); want=ymm ;;
      v4) vector=$(echo "$code" | grep -cE 'vfmadd[0-9]+ps[[:space:]].*%zmm' || true); want=zmm ;;
      *) echo "FAIL unknown variant $variant"; status=1; continue ;;
    esac
    if [ "$want" = 0 ] && [ "$vector" -ne 0 ]; then
      echo "FAIL baseline: $vector AVX (VEX/EVEX) instructions in a baseline object"
      status=1
    elif [ "$want" != 0 ] && [ "$vector" -eq 0 ]; then
      echo "FAIL $variant: no packed FMA on $want registers"
      status=1
    else
      echo "ok $variant $(basename "$object"): no shared symbols; vector instructions checked ($vector)"
    fi
  done
done
exit $status

