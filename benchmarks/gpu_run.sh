#!/usr/bin/env bash
# Every GPU check as one prepared script, for a lent GPU machine (see docs/benchmarks.md):
#   bash benchmarks/gpu_wheels.sh           # here, where pip reaches PyPI (build/ is carried)
#   then on the GPU machine, from the repository root, with benchmarks/build carried:
#   bash benchmarks/gpu_run.sh "$OUT"       # about 6 minutes on an H100
# Writes one markdown file per step into the folder given (default: ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-gpu-results}"
mkdir -p "$OUT_DIR"
PY="${BENCH_PYTHON:-python3}"
SITE=/tmp/qlty-site
if ls benchmarks/build/wheels/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" benchmarks/build/wheels/*.whl
fi
export PYTHONPATH="$PWD/src:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT_DIR/device.txt"
step() {  # step NAME COMMAND...: its output to NAME.md, and a line saying how it ended
  local name=$1; shift
  echo "## $name" ; timeout 900 "$@" >"$OUT_DIR/$name.md" 2>&1; echo "exit $? ($name)" | tee -a "$OUT_DIR/$name.md"
}
step gpu-tests "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/run/test_gpu.py tests/models/test_models.py
step gpu-check "$PY" benchmarks/gpu_check.py
step count-ops "$PY" benchmarks/count_ops.py
for wl in 2d 3d; do
  for model in identity conv; do
    step "overhead-$wl-$model" "$PY" benchmarks/bench_overhead.py --workload "$wl" --model "$model" --device cuda --repeats 5
  done
done
step speed-options-3d "$PY" benchmarks/bench_speed_options.py --workload 3d --model unet --device cuda
step speed-options-2d "$PY" benchmarks/bench_speed_options.py --workload 2d --model unet --device cuda
step pipeline "$PY" benchmarks/bench_pipeline.py --device cuda --shape 256,768,768 --budget 4GiB --chunk 128 --window 128 --step 108
step peers "$PY" benchmarks/bench_stitch.py --device cuda --methods ours,monai,floors --models identity,conv
