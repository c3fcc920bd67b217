// ONNX Runtime on the fixtures' ResNet8 anchors, timed like quantd-engine-bench
// (1 thread; batch-1 median latency over 500 runs; batch-256 throughput, median
// of 5 rounds of 10 batches) and scored on the 10000 test images. Prints JSON.
//
// usage: node scripts/ort_bench.js FIXTURES_DIR ORT_NODE_MODULES
//   ORT_NODE_MODULES: a node_modules folder holding onnxruntime-node
//   (scripts/bench.sh installs it under build/ort).
'use strict';

const fs = require('fs');
const path = require('path');

const [fixtures, modules] = process.argv.slice(2);
if (!fixtures || !modules) {
  console.error('usage: node scripts/ort_bench.js FIXTURES_DIR ORT_NODE_MODULES');
  process.exit(2);
}
const ort = require(path.join(modules, 'onnxruntime-node'));

// CIFAR-10 binary records -> float32 NCHW raw pixels, and labels.
function readCifar(file) {
  const raw = fs.readFileSync(file);
  const n = raw.length / 3073;
  const images = new Float32Array(n * 3072);
  const labels = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    labels[i] = raw[i * 3073];
    for (let j = 0; j < 3072; j++) images[i * 3072 + j] = raw[i * 3073 + 1 + j];
  }
  return { n, images, labels };
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function bench(model, test) {
  const session = await ort.InferenceSession.create(model, {
    intraOpNumThreads: 1,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  });
  const input = session.inputNames[0];
  const batchOf = (start, count) =>
    new ort.Tensor('float32', test.images.subarray(start * 3072, (start + count) * 3072), [count, 3, 32, 32]);
  const run = (tensor) => session.run({ [input]: tensor });

  const one = batchOf(0, 1);
  for (let i = 0; i < 50; i++) await run(one);
  const latencies = [];
  for (let i = 0; i < 500; i++) {
    const t = process.hrtime.bigint();
    await run(one);
    latencies.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  const batch = batchOf(0, 256);
  for (let i = 0; i < 3; i++) await run(batch);
  const rounds = [];
  for (let r = 0; r < 5; r++) {
    const t = process.hrtime.bigint();
    for (let i = 0; i < 10; i++) await run(batch);
    rounds.push((10 * 256) / (Number(process.hrtime.bigint() - t) / 1e9));
  }
  let correct = 0;
  for (let start = 0; start < test.n; start += 500) {
    const count = Math.min(500, test.n - start);
    const out = await run(batchOf(start, count));
    const scores = out[session.outputNames[0]].data;
    const classes = scores.length / count;
    for (let i = 0; i < count; i++) {
      let best = 0;
      for (let c = 1; c < classes; c++) if (scores[i * classes + c] > scores[i * classes + best]) best = c;
      correct += best === test.labels[start + i] ? 1 : 0;
    }
  }
  return { batch1_latency_ms: median(latencies), batch256_images_per_s: median(rounds), correct };
}

async function main() {
  const test = readCifar(path.join(fixtures, 'cifar10', 'test_batch.bin'));
  const models = {
    fp32: 'models/resnet8_fp32.onnx',
    u8u8_qoperator: 'anchors/resnet8_int8_ort_u8u8_qop_minmax.onnx',
    u8s8_qdq_per_channel: 'anchors/resnet8_int8_ort_u8s8_qdq_pc_minmax.onnx',
  };
  const result = { onnxruntime: ort.env.versions ? ort.env.versions.common : 'unknown' };
  for (const [name, file] of Object.entries(models)) result[name] = await bench(path.join(fixtures, file), test);
  console.log(JSON.stringify(result));
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
