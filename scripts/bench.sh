#!/usr/bin/env bash
# Benchmarks quantd's engine against PyTorch 1.13 eager mode on this machine, in one run,
# and prints the ratios. Needs a build (scripts/build.sh) and the fixtures.
#
#   scripts/bench.sh [FIXTURES_DIR]     (default ../shared/fixtures)
#
# PyTorch side: tests/engine/pytorch_reference.py --bench (fbgemm qconfig, onednn kernels):
# prepare+calibrate+convert time on 1 and 2 threads, int8 TorchScript batch-1 latency and
# batch-256 throughput on 1 thread. quantd side: build/worker/quantd-engine-bench (same
# model, data, qconfig and fusion groups; quantization on 1 and 2 intra-op threads, the
# int8 runtime on 1).
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures="${1:-${QUANTD_FIXTURES:-../shared/fixtures}}"
build_dir="${QUANTD_BUILD_DIR:-build}"
out="$(mktemp -d -t quantd-bench.XXXXXX)"
trap 'rm -rf "$out"' EXIT

echo "bench: PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') eager mode ..." >&2
/usr/bin/python3 tests/engine/pytorch_reference.py --fixtures "$fixtures" --qconfig fbgemm --bench --quantize-runs 5 \
  2>/dev/null >"$out/pytorch.json"
echo "bench: quantd ..." >&2
"$build_dir/worker/quantd-engine-bench" "$fixtures" --qconfig fbgemm --runs 7 >"$out/quantd.json"

/usr/bin/python3 - "$out/pytorch.json" "$out/quantd.json" <<'PY'
import json, sys
torch_result = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
t = torch_result['timing']
rows = [
    ('quantize ResNet8, 1000 calibration images, 1 thread (s)', t['quantize_s'], ours['quantize_1_thread']['median_s'], 'lower'),
    ('  ... the same steps as PyTorch\'s timer: quantd without loading the model (s)', t['quantize_s'], ours['quantize_1_thread']['median_after_loading_s'], 'lower'),
    ('  ... both sides on 2 threads (s)', t['quantize_2_threads_s'], ours['quantize_2_threads']['median_s'], 'lower'),
    ('  ... quantd on 2 threads vs PyTorch on 1 (s)', t['quantize_s'], ours['quantize_2_threads']['median_s'], 'lower'),
    ('int8 batch-1 latency, 1 thread (ms)', t['int8_torchscript']['batch1_latency_ms'], ours['int8_direct']['batch1_latency_ms'], 'lower'),
    ('int8 batch-256 throughput, 1 thread (img/s)', t['int8_torchscript']['batch256_images_per_s'], ours['int8_direct']['batch256_images_per_s'], 'higher'),
    ('  ... with auto fusion (residual add+ReLU fused) (img/s)', t['int8_torchscript']['batch256_images_per_s'], ours['int8_direct_auto_fusion']['batch256_images_per_s'], 'higher'),
    ('  ... quantd artifact in the TorchScript interpreter (img/s)', t['int8_torchscript']['batch256_images_per_s'], ours['int8_torchscript_artifact']['batch256_images_per_s'], 'higher'),
]
print(f"{'':78s} {'PyTorch':>10s} {'quantd':>10s} {'speed-up':>9s}")
for name, base, mine, better in rows:
    ratio = base / mine if better == 'lower' else mine / base
    print(f"{name:78s} {base:10.3f} {mine:10.3f} {ratio:8.2f}x")
print(f"\nquantd phases (1 thread, last run): {ours['quantize_1_thread']['phases_s_last_run']}")
print(f"quantd phases (2 threads, last run): {ours['quantize_2_threads']['phases_s_last_run']}")
blocked = ours.get('fp32_pass_on_onednn_blocked_s')
print(f"FP32 forward over the calibration set alone: {ours['fp32_pass_over_calibration_set_s']:.3f} s op by op in LibTorch"
      + (f", {blocked:.3f} s on oneDNN's blocked layout (what calibration runs)" if blocked else "")
      + f"; kernel engine {ours['kernel_engine']}")
PY
