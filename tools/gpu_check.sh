#!/usr/bin/env bash
# The GPU checks, in one run: minillava on CuPy against Transformers, the command line on the GPU, and the
# GPU speed ratios. Needs an NVIDIA GPU, CuPy, torch with CUDA and Transformers; no network.
#
#   bash tools/gpu_check.sh [OUT_DIR]        # results in OUT_DIR (default gpu-check/), a file per step
#
# 1. the tests that compare minillava with Transformers, with minillava on the GPU (`pytest --device cuda`
#    selects them; Transformers stays on the CPU in float32, so the tolerances are the CPU's: float32 parity);
# 2. `python -m minillava --device cuda`: the bundled demo's sample questions, answered on the GPU (float16);
# 3. tools/benchmark.py --device cuda, float32 and float16 (llava-1.5-7b widths, 2 text + 2 CLIP layers).
# Each step has its own time limit and writes its output as it goes, so a step that fails or runs out of
# time leaves the others' results. DEVICE=cpu runs the same steps on the CPU (to check the script itself).
set -u
out=${1:-gpu-check}
device=${DEVICE:-cuda}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # minillava from this checkout, without installing it

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to OUT/NAME.txt, print the exit status
    local name=$1 limit=$2
    shift 2
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

step pytest 200 python -m pytest -q -p no:cacheprovider --device "$device"  # the tests that use the device
step cli 60 python -m minillava --device "$device"
step bench-float32 140 python tools/benchmark.py --device "$device" --dtype float32 --json "$out/bench-float32.json"
step bench-float16 120 python tools/benchmark.py --device "$device" --dtype float16 --json "$out/bench-float16.json"
