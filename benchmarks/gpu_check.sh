#!/usr/bin/env bash
# GPU readiness check (issue 14 item 3): under 10 minutes on a machine with one CUDA GPU.
#
#   benchmarks/gpu_check.sh [--venv DIR] [--out FILE]     # installs the gpu extra, runs the check
#   benchmarks/gpu_check.sh --cpu-dry-run [--python PY]   # every step on the CPU, tiny sizes
#   benchmarks/gpu_check.sh --quick [--python PY]         # seconds: gpu_check.py --quick (its
#                                                         # JSON in a temporary folder)
#
# 1. a virtual environment (default .venv-gpu, created if missing) with the `gpu` extra from the
#    hash-locked requirements/gpu.txt (pip install --require-hashes), then this checkout
#    (pip install --no-deps -e .); --python PY uses an existing interpreter and installs nothing;
# 2. benchmarks/gpu_check.py: GPU float32 kernels against float64 CPU kernels on a few pairs
#    per arch (<= 1e-5 relative), gap/lap pairs/s at 32x32, the trainer's steps/s per arch at
#    paper widths; one JSON file (path printed; default results/gpu_check-<host>.json).
# Exit status: that of gpu_check.py (0 ok, 1 an accuracy check failed, 2 no GPU / bad use).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV="$ROOT/.venv-gpu"
PY=""
OUT="$ROOT/results/gpu_check-$(hostname).json"
DRY=()
OUT_GIVEN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    --out) OUT=$2; OUT_GIVEN=1; shift 2 ;;
    --cpu-dry-run) DRY=(--cpu-dry-run); shift ;;
    --quick) DRY=(--quick); shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1'; see --help" >&2; exit 2 ;;
  esac
done
if [ -z "$PY" ]; then
  if [ ! -x "$VENV/bin/python" ]; then
    echo "== creating $VENV"
    python3 -m venv "$VENV"
  fi
  PY="$VENV/bin/python"
  echo "== installing the gpu extra (requirements/gpu.txt, hash-checked) and this checkout"
  "$PY" -m pip install -q --require-hashes -r "$ROOT/requirements/gpu.txt"
  "$PY" -m pip install -q --no-deps -e "$ROOT"
else
  echo "== using $PY as it is (no installs)"
fi
echo "== $("$PY" -c 'import jax; print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())')"
if [ ${#DRY[@]} -eq 0 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
if [ ${#DRY[@]} -eq 0 ]; then  # the check every GPU trial and GPU tile runs first
  dev=$(cd "$ROOT" && "$PY" -c 'from workers.devices import check_gpus, describe
print(describe(check_gpus(1)))') || { echo "gpu_check.sh: the trial device check failed" >&2; exit 2; }
  echo "== trial device check: $dev"
fi
cd "$ROOT"
# one trial per GPU here: let jax take the memory it needs as it goes (no 75% preallocation),
# so memory_stats() reports the device's real free memory to the work-item sizing
export XLA_PYTHON_CLIENT_PREALLOCATE=false
start=$(date +%s)
set +e
OUT_ARG=(--out "$OUT")
if [ "${DRY[*]}" = "--quick" ] && [ $OUT_GIVEN -eq 0 ]; then
  OUT_ARG=()  # gpu_check.py --quick writes into a temporary folder
  OUT="(temporary, removed)"
fi
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu_check.py "${DRY[@]}" "${OUT_ARG[@]}"
rc=$?
set -e
echo "== gpu_check finished in $(( $(date +%s) - start )) s (exit $rc); results: $OUT"
exit $rc
