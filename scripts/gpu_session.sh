#!/usr/bin/env bash
# Every GPU figure issue 5 asks for, in one call of a lent GPU (about 8 minutes on an H200; installs
# nothing: torch, triton, pandas, seaborn, nvidia-ml-py and pytest-benchmark must be there already).
#
#     OUT=/path/to/dir bash scripts/gpu_session.sh          # the device tool sets OUT itself
#     DEVICE=cpu SMOKE=1 bash scripts/gpu_session.sh          # check the script here: dry runs, no GPU
#
# Writes under $OUT: env.txt (moebench env), nvidia-smi.txt, pytest-cuda.txt (the CUDA-marked tests,
# Triton compiled, not interpreted), and the JSONL results of: gpu_speed (bf16, G=1 and G=16, every
# GPU dispatch backend, frac_of_ceiling), peer at N=1024^2 and 2048^2 (product keys; fp32 and bf16 at
# 2048^2) and granularity in bf16; then a report of them all. Each step has its own time limit, and a
# step that fails or times out does not stop the next: its log says what happened. Commit what comes
# back under results/ (with env.txt, which holds the conditions) and say so in results/README.md.
set -u
OUT=${OUT:-results/gpu-$(date -u +%Y%m%d-%H%M%S)}
DEVICE=${DEVICE:-cuda}
DRY=""
[ "${SMOKE:-0}" = "1" ] && DRY="--dry-run"
mkdir -p "$OUT"
PY=${PYTHON:-python}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.txt, never stop the script
    local name=$1 limit=$2
    shift 2
    echo "[$(date -u +%T)] $name (limit ${limit}s): $*" | tee -a "$OUT/session.log"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    echo "[$(date -u +%T)] $name exit $?" | tee -a "$OUT/session.log"
}

step env 60 $PY -m moebench.cli env
step nvidia-smi 20 nvidia-smi
if [ -z "$DRY" ]; then
    step pytest-cuda 150 $PY -m pytest -q -m cuda tests -p no:cacheprovider
fi
step gpu_speed 150 $PY -m moebench.cli run gpu_speed --device "$DEVICE" --out "$OUT" $DRY
step peer 150 $PY -m moebench.cli run peer --device "$DEVICE" --out "$OUT" --filter peer_retrieval=product $DRY
step granularity 90 $PY -m moebench.cli run granularity --device "$DEVICE" --dtype bfloat16 --out "$OUT" $DRY
if [ -z "$DRY" ]; then
    step report 60 $PY -m moebench.cli report "$OUT"/*.jsonl -o "$OUT/report/gpu.html"
fi
echo "done: $OUT" | tee -a "$OUT/session.log"
