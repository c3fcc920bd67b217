#!/usr/bin/env bash
# The 30-second tour: sets up, builds, starts quantd on a free port with
# ./data, checks its health with quantctl, quantizes the ResNet8 fixture to
# int8 and evaluates it, then serves the published version (quantctl infer,
# REST metadata, quantctl eval).
#
#   scripts/demo.sh [FIXTURES_DIR]     (or QUANTD_FIXTURES=...; default ../shared/fixtures)
set -euo pipefail
cd "$(dirname "$0")/.."

fixtures="${1:-${QUANTD_FIXTURES:-../shared/fixtures}}"
build_dir="${QUANTD_BUILD_DIR:-build}"

# Before the build: without the fixtures there is no job to run.
if [ ! -f "$fixtures/models/resnet8_fp32.torchscript.pt" ]; then
  echo "demo: fixtures not found in $fixtures (see README, 'Fixtures')" >&2
  exit 1
fi

scripts/build.sh

mkdir -p data
port_file="$(mktemp -t quantd-demo-ports.XXXXXX)"
rm -f "$port_file"
log_file="data/quantd-demo.log"

"$build_dir/server/quantd" --bind_address=127.0.0.1 --grpc_port=0 --metrics_port=0 \
  --data_dir=./data --port_file="$port_file" 2>"$log_file" &
quantd_pid=$!

stop_quantd() {
  if kill -0 "$quantd_pid" 2>/dev/null; then
    kill -TERM "$quantd_pid"
    if wait "$quantd_pid"; then
      echo "demo: quantd stopped cleanly (exit 0)"
    else
      echo "demo: quantd exited with $?" >&2
    fi
  fi
  rm -f "$port_file"
}
trap stop_quantd EXIT

# Wait (bounded) for quantd to write its ports.
for _ in $(seq 1 300); do
  [ -s "$port_file" ] && break
  if ! kill -0 "$quantd_pid" 2>/dev/null; then
    echo "demo: quantd failed to start:" >&2
    cat "$log_file" >&2
    exit 1
  fi
  sleep 0.1
done
if [ ! -s "$port_file" ]; then
  echo "demo: quantd did not start listening within 30 s" >&2
  cat "$log_file" >&2
  exit 1
fi
grpc_port="$(sed -n 's/.*"grpc_port": *\([0-9]*\).*/\1/p' "$port_file")"
metrics_port="$(sed -n 's/.*"metrics_port": *\([0-9]*\).*/\1/p' "$port_file")"
cat "$log_file"

echo
echo "\$ quantctl --server=127.0.0.1:$grpc_port health"
"$build_dir/client/quantctl" --server="127.0.0.1:$grpc_port" health
echo "\$ quantctl --server=127.0.0.1:$grpc_port --json health"
"$build_dir/client/quantctl" --server="127.0.0.1:$grpc_port" --json health
echo "metrics: http://127.0.0.1:$metrics_port/metrics"

quantctl=("$build_dir/client/quantctl" --server="127.0.0.1:$grpc_port" --timeout_seconds=600)

# The main job: upload the MLPerf Tiny ResNet8 and CIFAR-10, quantize with the
# embedded defaults (fbgemm preset, auto fusion, 1000 calibration images),
# evaluate on the 10000 test images, download the int8 artifact.
echo
echo "\$ quantctl upload ... (model, calibration set, test set)"
model_blob="$("${quantctl[@]}" upload "$fixtures/models/resnet8_fp32.torchscript.pt" --kind=model | awk '{print $1}')"
calib_blob="$("${quantctl[@]}" upload "$fixtures/cifar10/calib_batch.bin" --kind=dataset --data_format=cifar10 | awk '{print $1}')"
test_blob="$("${quantctl[@]}" upload "$fixtures/cifar10/test_batch.bin" --kind=dataset --data_format=cifar10 | awk '{print $1}')"
echo "model $model_blob"
echo "calibration $calib_blob"
echo "test $test_blob"
echo
echo "\$ quantctl submit --model_blob=... --calib_blob=... --eval_blob=... --preset=fbgemm --fusion=auto --model_name=resnet8 --wait"
"${quantctl[@]}" submit --model_blob="$model_blob" --calib_blob="$calib_blob" --eval_blob="$test_blob" \
  --preset=fbgemm --fusion=auto --model_name=resnet8 --wait | tee data/demo-job.txt
artifact_id="$(grep -o 'result artifact art-[0-9a-f]*' data/demo-job.txt | awk '{print $3}' | head -n 1 || true)"
if [ -z "$artifact_id" ]; then
  echo "demo: the job's output names no artifact (see data/demo-job.txt)" >&2
  exit 1
else
  "${quantctl[@]}" download "$artifact_id" -o data/resnet8_int8.pt
  engine="$(sed -n 's/^  kernel_engine: //p' data/demo-job.txt | head -n 1)"
  echo "demo: int8 artifact data/resnet8_int8.pt (load it in Python with torch.backends.quantized.engine = '$engine')"
fi

# The job published its artifact as the newest version of "resnet8": serve it.
echo
echo "\$ quantctl models resnet8"
"${quantctl[@]}" models resnet8
echo
echo "\$ quantctl infer resnet8 --data=$fixtures/cifar10/test_batch.bin --count=3"
"${quantctl[@]}" infer resnet8 --data="$fixtures/cifar10/test_batch.bin" --count=3
if [ -n "$metrics_port" ] && [ "$metrics_port" != "-1" ]; then
  echo
  echo "\$ curl -s localhost:$metrics_port/v2/models/resnet8    # the same protocol over REST"
  curl -s "http://127.0.0.1:$metrics_port/v2/models/resnet8"
  echo
fi
echo
echo "\$ quantctl eval resnet8 --data_blob=...    # int8 and FP32 side by side"
"${quantctl[@]}" eval resnet8 --data_blob="$test_blob"
