#!/usr/bin/env bash
# `make gpu-check`: on a machine with a CUDA GPU, set up the environment (`make install`), run the
# tests marked `cuda`, then bench/bench_gpu.py, all within GPU_CHECK_BUDGET_S seconds (default 480:
# a GPU is lent for minutes); on a machine without one, say so in one line and exit 0.
# Logs and figures go to bench/results/: gpu-tests.log, gpu-bench.log, gpu.json, gpu.md.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
RESULTS=bench/results
start=$SECONDS

gpu_listed() {
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU '
}
torch_sees_gpu() {  # $1: a Python; false when it has no torch
    "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1
}
gpu_devices() {  # the device files any GPU that torch can use needs (NVIDIA's; ROCm's /dev/kfd)
    compgen -G '/dev/nvidia[0-9]*' >/dev/null || [ -e /dev/kfd ]
}
# A bare machine has no torch yet: nvidia-smi answers for it. A container may lack nvidia-smi:
# where it has GPU device files, a torch already installed (the environment's, or $PYTHON's)
# answers. Without either, no torch can see a GPU, and none is imported (seconds on a busy CPU).
if ! gpu_listed && ! { gpu_devices && { torch_sees_gpu "$VENV/bin/python" \
    || torch_sees_gpu "$PYTHON"; }; }; then
    echo "gpu-check: no CUDA GPU on this machine; nothing to check"
    exit 0
fi

left() { echo $((BUDGET_S - (SECONDS - start))); }
at_least_10() { if [ "$1" -lt 10 ]; then echo 10; else echo "$1"; fi; }
mkdir -p "$RESULTS"

# The install (PyTorch's CUDA build: minutes on a bare machine) leaves 4 minutes at least for the
# tests and the benchmark.
install_s=$(at_least_10 $(($(left) - 240)))
echo "gpu-check: setting up $VENV (make install, $install_s s at most)"
if ! timeout "$install_s" make --no-print-directory install PYTHON="$PYTHON" VENV="$VENV"; then
    # A GPU machine may have no network: an environment that already runs this checkout will do.
    if "$VENV/bin/python" -c 'import sys, captionkit, pytest
sys.exit(not captionkit.__file__.startswith(sys.argv[1]))' "$PWD/src/" >/dev/null 2>&1; then
        echo "gpu-check: make install failed or ran out of time; going on with $VENV as it is" >&2
    else
        echo "gpu-check: make install failed or ran out of time" >&2
        exit 1
    fi
fi
if ! torch_sees_gpu "$VENV/bin/python"; then
    echo "gpu-check: this machine has a GPU, but the torch of $VENV cannot use it:" \
        "$("$VENV/bin/python" -c 'import torch; print(torch.__version__, torch.version.cuda)')" >&2
    exit 1
fi

# The tests may take all but 2 minutes of what is left; the benchmark gets the rest, and starts
# no figure in its last 40 seconds (it writes gpu.json after every figure).
tests_s=$(at_least_10 $(($(left) - 120)))
echo "gpu-check: the tests marked cuda ($tests_s s at most)"
timeout "$tests_s" "$VENV/bin/python" -m pytest -m cuda -q -p no:cacheprovider 2>&1 \
    | tee "$RESULTS/gpu-tests.log"
tests=${PIPESTATUS[0]}
bench_s=$(at_least_10 "$(left)")
echo "gpu-check: bench/bench_gpu.py ($bench_s s at most)"
timeout "$bench_s" "$VENV/bin/python" bench/bench_gpu.py --output "$RESULTS/gpu.json" \
    --budget-s "$((bench_s - 40))" 2>&1 | tee "$RESULTS/gpu-bench.log"
bench=${PIPESTATUS[0]}

if [ "$tests" -ne 0 ] || [ "$bench" -ne 0 ]; then
    echo "gpu-check: FAILED after $((SECONDS - start)) s (tests: exit $tests, benchmark: exit" \
        "$bench; 124 = out of time); logs in $RESULTS/" >&2
    exit 1
fi
echo "gpu-check: passed in $((SECONDS - start)) s; figures in $RESULTS/gpu.json and gpu.md"
if grep -q "Cut short" "$RESULTS/gpu.md"; then
    echo "gpu-check: the benchmark ran out of time for some figures (see $RESULTS/gpu.md)"
fi
