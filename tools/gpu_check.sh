#!/usr/bin/env bash
# The GPU checks, in one run: minillava on CuPy against Transformers, the command line on the GPU, and the
# GPU speed ratios. Needs an NVIDIA GPU, CuPy, torch with CUDA and Transformers; no network.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # results in OUT_DIR (default gpu-check/), a file per step
#
# 1. the tests that compare minillava with Transformers, with minillava on the GPU (`pytest --device cuda`
#    selects them; Transformers stays on the CPU in float32, so the tolerances are the CPU's: float32 parity);
# 2. `python -m minillava --device cuda`: the bundled demo's sample questions, answered on the GPU (float16), then
#    again with --cuda-graphs --fused-kernels (the decode steps recorded as a CUDA graph, the language model's
#    elementwise chains as fused kernels), which must answer the same;
# 3. tools/benchmark_gpu_7b.py: llava-1.5-7b at full size (32 + 24 layers), random float16 weights made on the
#    GPU, minillava against Transformers sdpa and eager (image encode, prefill, decode at batch 1 and 8, peak
#    memory; minillava also with cuda_graphs and fused_kernels); it writes its JSON after each round, so a round
#    cut short by the time limit leaves the ones before; with DEVICE=cpu its --smoke mode (tiny sizes), since a 7B
#    on the CPU would not fit the time limit;
# 4. tools/benchmark.py --device cuda, float32 and float16 (llava-1.5-7b widths, 2 text + 2 CLIP layers).
# Each step has its own time limit and writes its output as it goes, so a step that fails or runs out of
# time leaves the others' results. The whole run has a budget, 8 minutes of GPU time (BUDGET_S=seconds to
# change it): a step gets at most what is left of it, and one that would get under 20 s is skipped, so the
# steps come most important first. DEVICE=cpu runs the same steps on the CPU (to check the script itself),
# with an hour's budget.
set -u
out=${1:-gpu-check}
device=${DEVICE:-cuda}
if [ "$device" = cuda ]; then budget=${BUDGET_S:-480}; else budget=${BUDGET_S:-3600}; fi
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # minillava from this checkout, without installing it

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt, print the exit status
    local name=$1 limit=$2
    shift 2
    local left=$((budget - SECONDS))  # SECONDS: since the script started
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped, $left s left of the $budget s budget" | tee -a "$out/summary.txt"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    echo "$name: exit $rc, $((SECONDS - start)) s" | tee -a "$out/summary.txt"
    tail -n 3 "$out/$name.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    python - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "cupy", "torch", "transformers", "tokenizers", "safetensors", "PIL"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as err:  # noqa: BLE001
        print(name, "not importable:", err)
EOF
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

step pytest 200 python -m pytest -q -p no:cacheprovider --device "$device" --only-device-tests  # those that use it
step cli 60 python -m minillava --device "$device"
step cli-fast 60 python -m minillava --device "$device" --cuda-graphs --fused-kernels  # recorded steps, fused kernels
if cmp -s "$out/cli.txt" "$out/cli-fast.txt"; then same=yes; else same=NO; fi
echo "cli-fast: the same answers as the plain functions and step: $same" | tee -a "$out/summary.txt"
smoke=(); [ "$device" = cpu ] && smoke=(--smoke)  # a 7B on the CPU would not fit: there, only the script is checked
step bench-7b-full 180 python tools/benchmark_gpu_7b.py --device "$device" "${smoke[@]}" \
    --json "$out/bench-7b-full.json"
step bench-float32 140 python tools/benchmark.py --device "$device" --dtype float32 --json "$out/bench-float32.json"
step bench-float16 120 python tools/benchmark.py --device "$device" --dtype float16 --json "$out/bench-float16.json"
