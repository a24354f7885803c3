#!/usr/bin/env bash
# The GPU check (issue 14): on one NVIDIA GPU, in at most 8 minutes, the smoke suite on the device,
# a CE ResNet-32 epoch (eager, compiled, CUDA graphs), meta / CE step time at SL 0 and 3 (eager,
# compiled, compiled with CUDA graphs), 1/2/4 concurrent runs and the extrapolated cifar10 and
# Table 1 times, with their targets, written as gpu-check.json and gpu-check.md in --out DIR.
#   scripts/gpu-check.sh --out DIR [--device cuda:N]     (default --device cuda)
#   scripts/gpu-check.sh --device cpu --out DIR          (reduced size, ~2 min: what CI runs)
# Exit 0 unless a section crashed (a missed target is a figure, not a failure). See PERFORMANCE.md.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
args=("$@")
case " $* " in
  *" --device"*) ;;
  *) args=(--device cuda "${args[@]}") ;;
esac
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$python" -m curvebench.cli perf --gpu-check "${args[@]}"
