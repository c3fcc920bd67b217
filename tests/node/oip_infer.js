#!/usr/bin/env node
// An Open Inference Protocol client as KServe's users write one: generated at
// run time from the protocol's .proto alone (no reflection, nothing of
// quantd's own API). Checks liveness, readiness and metadata, then sends
// CIFAR-10 images as UINT8 raw_input_contents and prints
// {"live", "ready", "metadata", "predictions": [argmax per image], "scores": [...]}.
//
//   node oip_infer.js HOST:PORT PROTO_FILE MODEL CIFAR_BIN FIRST COUNT

'use strict';

const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + 60000) }, (err, response) => {
      if (err) reject(new Error(`${method}: ${err.code} ${err.details}`));
      else resolve(response);
    });
  });
}

async function main() {
  const [target, protoFile, model, cifar, firstArg, countArg] = process.argv.slice(2);
  const first = Number(firstArg);
  const count = Number(countArg);
  const definition = protoLoader.loadSync(protoFile, { keepCase: true, longs: String, enums: String, defaults: true });
  const pkg = grpc.loadPackageDefinition(definition);
  const client = new pkg.inference.GRPCInferenceService(target, grpc.credentials.createInsecure());

  const live = await call(client, 'ServerLive', {});
  const ready = await call(client, 'ServerReady', {});
  const metadata = await call(client, 'ModelMetadata', { name: model, version: '' });

  // CIFAR-10 binary: per image 1 label byte, then 3072 pixel bytes (CHW).
  const data = fs.readFileSync(cifar);
  const pixels = Buffer.alloc(count * 3072);
  for (let i = 0; i < count; i++) data.copy(pixels, i * 3072, (first + i) * 3073 + 1, (first + i + 1) * 3073);
  const response = await call(client, 'ModelInfer', {
    model_name: model,
    id: 'node-client',
    inputs: [{ name: 'input', datatype: 'UINT8', shape: [count, 3, 32, 32] }],
    outputs: [{ name: 'output' }],
    raw_input_contents: [pixels],
  });
  const raw = response.raw_output_contents[0];
  const classes = Number(response.outputs[0].shape[1]);
  const scores = [];
  const predictions = [];
  for (let i = 0; i < count; i++) {
    let best = 0;
    for (let c = 0; c < classes; c++) {
      const v = raw.readFloatLE((i * classes + c) * 4);
      scores.push(v);
      if (v > raw.readFloatLE((i * classes + best) * 4)) best = c;
    }
    predictions.push(best);
  }
  process.stdout.write(JSON.stringify({
    live: live.live, ready: ready.ready, id: response.id,
    metadata: { name: metadata.name, inputs: metadata.inputs, outputs: metadata.outputs },
    predictions, scores,
  }) + '\n');
  client.close();
}

main().catch((e) => {
  process.stderr.write(`${e.stack || e}\n`);
  process.exit(1);
});
