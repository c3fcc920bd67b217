#!/usr/bin/env bash
# Benchmarks quantd's engine against PyTorch 1.13 eager mode and ONNX Runtime on this machine, in
# one run, and prints the ratios. Needs a build (scripts/build.sh) and the fixtures.
#
#   scripts/bench.sh [FIXTURES_DIR] [--emulate-avx2]     (default ../shared/fixtures)
#
# PyTorch side: tests/engine/pytorch_reference.py --bench (fbgemm qconfig, onednn kernels):
# prepare+calibrate+convert time on 1 and 2 threads, int8 TorchScript batch-1 latency and
# batch-256 throughput on 1 thread. quantd side: build/worker/quantd-engine-bench (same model,
# data, qconfig and fusion groups; quantization on 1 and 2 intra-op threads, the int8 runtime
# on 1). ONNX Runtime side: scripts/ort_bench.js with onnxruntime-node (installed once under
# build/ort from the npm registry) on the fixtures' int8 anchors, 1 thread.
#
# --emulate-avx2 caps oneDNN, ATen and quantd's own kernels at AVX2 (DNNL_MAX_CPU_ISA=AVX2,
# ATEN_CPU_CAPABILITY=avx2) for quantd and PyTorch: what an AVX2-only CPU runs, on this one.
# ONNX Runtime has no such switch, so its figures then stay this CPU's own, and the script
# says so.
set -euo pipefail
cd "$(dirname "$0")/.."
fixtures="${QUANTD_FIXTURES:-../shared/fixtures}"
emulate=""
for arg in "$@"; do
  case "$arg" in
    --emulate-avx2) emulate=1 ;;
    -*) echo "bench: unknown flag $arg (usage: scripts/bench.sh [FIXTURES_DIR] [--emulate-avx2])" >&2; exit 2 ;;
    *) fixtures="$arg" ;;
  esac
done
build_dir="${QUANTD_BUILD_DIR:-build}"
out="$(mktemp -d -t quantd-bench.XXXXXX)"
trap 'rm -rf "$out"' EXIT

ort_modules="$build_dir/ort/node_modules"
if [ ! -d "$ort_modules/onnxruntime-node" ]; then
  echo "bench: installing onnxruntime-node 1.30.0 into $build_dir/ort (once)" >&2
  mkdir -p "$build_dir/ort"
  # --ignore-scripts: its install script fetches from a host this machine cannot reach; the CPU
  # binaries are in the package itself.
  (cd "$build_dir/ort" && npm install --ignore-scripts --no-audit --no-fund --loglevel=error \
    onnxruntime-node@1.30.0 >&2) || echo "bench: no onnxruntime-node; ONNX Runtime rows are skipped" >&2
fi
if [ -d "$ort_modules/onnxruntime-node" ]; then
  echo "bench: ONNX Runtime ..." >&2
  node scripts/ort_bench.js "$fixtures" "$(cd "$ort_modules" && pwd)" >"$out/ort.json"
else
  echo '{}' >"$out/ort.json"
fi

if [ -n "$emulate" ]; then
  export DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
fi
echo "bench: PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)') eager mode ..." >&2
# PyTorch's warnings go to a file, shown if the reference fails.
if ! /usr/bin/python3 tests/engine/pytorch_reference.py --fixtures "$fixtures" --qconfig fbgemm --bench \
  --quantize-runs 5 2>"$out/pytorch.err" >"$out/pytorch.json"; then
  echo "bench: the PyTorch reference failed:" >&2
  cat "$out/pytorch.err" >&2
  exit 1
fi
echo "bench: quantd ..." >&2
"$build_dir/worker/quantd-engine-bench" "$fixtures" --qconfig fbgemm --runs 7 >"$out/quantd.json"

/usr/bin/python3 - "$out/pytorch.json" "$out/quantd.json" "$out/ort.json" "$emulate" <<'PY'
import json, sys
torch_result = json.load(open(sys.argv[1]))
ours = json.load(open(sys.argv[2]))
ort = json.load(open(sys.argv[3]))
emulated = bool(sys.argv[4])
cpu = ours['cpu']
print(f"CPU: {cpu['model']}; features: {' '.join(cpu['features'])}")
print(f"oneDNN isa: {cpu['onednn_isa']}; quantd's own kernels: {cpu['kernel_isa']}; "
      f"int8 u8 x s8 saturates on: {', '.join(cpu['saturating_engines']) or 'nothing'}"
      + ("  [EMULATED AVX2: DNNL_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2]" if emulated else ""))
print(f"quantd kernel engine: {ours['kernel_engine']} ({ours['kernel_choice']})\n")
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
print(f"{'against PyTorch 1.13 (same run)':78s} {'PyTorch':>10s} {'quantd':>10s} {'speed-up':>9s}")
for name, base, mine, better in rows:
    ratio = base / mine if better == 'lower' else mine / base
    print(f"{name:78s} {base:10.3f} {mine:10.3f} {ratio:8.2f}x")

if ort:
    # ONNX Runtime's U8S8 kernels saturate without VNNI just as onednn's do: they are exact only
    # on a CPU with AVX512-VNNI or AVX-VNNI (ONNX Runtime is never emulated).
    vnni = any(f in cpu['features'] for f in ('avx512_vnni', 'avx_vnni', 'amx_int8'))
    exact = {'u8u8_qoperator': True, 'u8s8_qdq_per_channel': vnni}
    print(f"\n{'against ONNX Runtime ' + ort['onnxruntime'] + ' (same run, 1 thread)':58s} {'exact':>6s} {'top-1':>6s} "
          f"{'b1 ms':>8s} {'b256 img/s':>11s}")
    for name in ('fp32', 'u8u8_qoperator', 'u8s8_qdq_per_channel'):
        r = ort[name]
        print(f"  ORT {name:53s} {('-' if name == 'fp32' else 'yes' if exact[name] else 'NO'):>6s} {r['correct']:6d} "
              f"{r['batch1_latency_ms']:8.3f} {r['batch256_images_per_s']:11.0f}")
    exact_rows = [ort[n] for n, e in exact.items() if e]
    best_b1 = min(r['batch1_latency_ms'] for r in exact_rows)
    best_b256 = max(r['batch256_images_per_s'] for r in exact_rows)
    q = ours['int8_direct']
    print(f"  quantd (fbgemm qconfig, {ours['kernel_engine']} kernels, exact){'':19s} {'yes':>6s} {'':>6s} "
          f"{q['batch1_latency_ms']:8.3f} {q['batch256_images_per_s']:11.0f}")
    print(f"  quantd vs ONNX Runtime's fastest exact: batch-1 {best_b1 / q['batch1_latency_ms']:.2f}x, "
          f"batch-256 {q['batch256_images_per_s'] / best_b256:.2f}x"
          + ("  (ONNX Runtime ran on this CPU's full ISA, quantd emulated AVX2: not a like-for-like pair)"
             if emulated else ""))

print(f"\nquantd phases (1 thread, last run): {ours['quantize_1_thread']['phases_s_last_run']}")
print(f"quantd phases (2 threads, last run): {ours['quantize_2_threads']['phases_s_last_run']}")
blocked = ours.get('fp32_pass_on_onednn_blocked_s')
print(f"FP32 forward over the calibration set alone: {ours['fp32_pass_over_calibration_set_s']:.3f} s op by op in LibTorch"
      + (f", {blocked:.3f} s on oneDNN's blocked layout (what calibration runs)" if blocked else ""))
PY
