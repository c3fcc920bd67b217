#!/usr/bin/env bash
# Optional: runs the engine against another LibTorch -- the lent accelerator machine's
# PyTorch 2.x wheel, which has the real fbgemm kernels Debian's LibTorch 1.13 lacks.
# Never needed by CI.
#
#   scripts/device_check.sh stage [FIXTURES]   here: copy the Debian-only build deps (Abseil,
#                                              nlohmann_json, OpenSSL) and the fixtures into
#                                              .device-deps/ (git-ignored; carried to the device)
#   scripts/device_check.sh run                on the device: build the engine only against its
#                                              LibTorch, quantize ResNet8 on the fbgemm and onednn
#                                              kernels, compare with PyTorch eager on the same machine,
#                                              then the best preset over its 6 calibration sets
set -euo pipefail
cd "$(dirname "$0")/.."
deps="$PWD/.device-deps"
lib=usr/lib/x86_64-linux-gnu

case "${1:-}" in
stage)
  fixtures="${2:-../shared/fixtures}"
  rm -rf "$deps"
  mkdir -p "$deps/usr/include" "$deps/$lib/cmake" "$deps/usr/share/cmake" "$deps/fixtures/models" "$deps/fixtures/cifar10"
  cp -r /usr/include/absl /usr/include/nlohmann "$deps/usr/include/"
  cp -r /usr/include/openssl "$deps/usr/include/"
  cp /usr/include/x86_64-linux-gnu/openssl/*.h "$deps/usr/include/openssl/"
  cp -a /$lib/libabsl_*.so* "$deps/$lib/"
  cp -r /$lib/cmake/absl "$deps/$lib/cmake/"
  cp -r /usr/share/cmake/nlohmann_json "$deps/usr/share/cmake/"
  cp -L /$lib/libcrypto.so.3 "$deps/$lib/"
  ln -sf libcrypto.so.3 "$deps/$lib/libcrypto.so"
  cp "$fixtures/models/resnet8_fp32.torchscript.pt" "$deps/fixtures/models/"
  cp "$fixtures/cifar10/calib_batch.bin" "$fixtures/cifar10/val_batch.bin" "$fixtures/cifar10/test_batch.bin" \
    "$deps/fixtures/cifar10/"
  cp -r "$fixtures/tools" "$deps/fixtures/"
  du -sh "$deps"
  ;;
run)
  py="$(command -v python3)"
  torch_prefix="$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  echo "device: $("$py" -c 'import torch; print("torch", torch.__version__, "engines", torch.backends.quantized.supported_engines)')"
  echo "device: $(nproc) cores, $(g++ --version | head -n 1)"
  cmake -G Ninja -S . -B build-device -DQUANTD_ENGINE_ONLY=ON -DQUANTD_WERROR=OFF -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -Dabsl_DIR="$deps/$lib/cmake/absl" \
    -Dnlohmann_json_DIR="$deps/usr/share/cmake/nlohmann_json" \
    -DOPENSSL_INCLUDE_DIR="$deps/usr/include" -DOPENSSL_CRYPTO_LIBRARY="$deps/$lib/libcrypto.so" \
    -DQUANTD_FIXTURES_DIR="$deps/fixtures" >build-device.log 2>&1 || { tail -n 40 build-device.log; exit 1; }
  cmake --build build-device -j"$(nproc)" --target quantd-quantize quantd-engine-bench quantd-accuracy-bench >>build-device.log 2>&1 \
    || { grep -m 20 -E "error|Error" build-device.log; exit 1; }
  export LD_LIBRARY_PATH="$deps/$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  out="${OUT:-/tmp}"
  spec="$out/spec.json"
  echo '[["conv1","bn1","relu1"],["layer1.conv1","layer1.bn1","layer1.relu1"],["layer1.conv2","layer1.bn2"],["layer2.conv1","layer2.bn1","layer2.relu1"],["layer2.conv2","layer2.bn2"],["layer3.conv1","layer3.bn1","layer3.relu1"],["layer3.conv2","layer3.bn2"]]' >"$spec"
  for engine in fbgemm onednn; do
    ./build-device/worker/quantd-quantize --model "$deps/fixtures/models/resnet8_fp32.torchscript.pt" \
      --calibration "$deps/fixtures/cifar10/calib_batch.bin" --qconfig fbgemm --kernel-engine "$engine" \
      --fusion "$spec" --output "$out/quantd_fbgemm_on_$engine.pt" --report "$out/quantd_fbgemm_on_$engine.json" \
      --eval "$deps/fixtures/cifar10/test_batch.bin" | grep -E "kernel engine|top-1|timings"
    "$py" tests/engine/pytorch_reference.py --fixtures "$deps/fixtures" --qconfig fbgemm --engine "$engine" \
      2>"$out/pytorch_fbgemm_on_$engine.err" >"$out/pytorch_fbgemm_on_$engine.json" ||
      { cat "$out/pytorch_fbgemm_on_$engine.err" >&2; exit 1; }
    "$py" tests/engine/pytorch_reference.py --fixtures "$deps/fixtures" --engine "$engine" \
      --artifact "$out/quantd_fbgemm_on_$engine.pt" 2>"$out/artifact_fbgemm_on_$engine.err" \
      >"$out/artifact_fbgemm_on_$engine.json" || { cat "$out/artifact_fbgemm_on_$engine.err" >&2; exit 1; }
    "$py" - "$out" "$engine" <<'PY'
import json, sys
out, engine = sys.argv[1], sys.argv[2]
ours = json.load(open(f"{out}/quantd_fbgemm_on_{engine}.json"))
ref = json.load(open(f"{out}/pytorch_fbgemm_on_{engine}.json"))
art = json.load(open(f"{out}/artifact_fbgemm_on_{engine}.json"))
layers = {l["name"]: l for l in ours["layers"]}
worst = 0.0
zp = 0
for name, q in ref["qparams"].items():
    mine = layers["quantize:x" if name == "quant" else name.replace(".skip_add", ":add")]
    worst = max(worst, abs(mine["output_scale"] - q["scale"]) / q["scale"])
    zp = max(zp, abs(mine["output_zero_point"] - q["zero_point"]))
print(f"{engine} kernels: quantd int8 {ours['accuracy']['int8']['correct']}/10000, PyTorch {ref['torch']} eager "
      f"{ref['correct']}/10000, artifact in PyTorch {art['artifact_correct']}/10000; "
      f"worst scale difference {worst:.2e}, worst zero-point difference {zp}")
PY
  done
  ./build-device/worker/quantd-engine-bench "$deps/fixtures" --qconfig fbgemm --runs 3
  # The best preset (issue #12) on this CPU's exact kernels: calib_batch.bin and seeds 1-5.
  ./build-device/worker/quantd-accuracy-bench --fixtures="$deps/fixtures" --configs=best --threads="$(nproc)"
  ;;
*)
  echo "usage: scripts/device_check.sh stage [FIXTURES] | run" >&2
  exit 2
  ;;
esac
