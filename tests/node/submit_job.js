#!/usr/bin/env node
// grpcurl-style JSON client, built only from server reflection: submits a
// QuantizeJobRequest given as JSON, polls GetJob until the job ends and prints
// {"submitted": Job, "final": Job} (or {"error": {code, details}}).
//
//   node submit_job.js HOST:PORT '{"model": {...}, ...}'

'use strict';

const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

function call(client, method, request, ms) {
  return new Promise((resolve) => {
    client[method](request, { deadline: new Date(Date.now() + ms) }, (err, response) => {
      resolve(err ? { error: { code: err.code, details: err.details || '' } } : { response });
    });
  });
}

async function main() {
  const [target, json] = process.argv.slice(2);
  const insecure = grpc.credentials.createInsecure();
  const reflection = new GrpcReflection(target, insecure);
  const descriptor = await reflection.getDescriptorBySymbol('quantd.v1.QuantizationService',
                                                           { deadline: new Date(Date.now() + 10000) });
  const pkg = descriptor.getPackageObject({ keepCase: true, enums: String, longs: String, oneofs: true });
  const client = new pkg.quantd.v1.QuantizationService(target, insecure);
  const submitted = await call(client, 'QuantizeJob', JSON.parse(json), 10000);
  if (submitted.error) {
    process.stdout.write(JSON.stringify(submitted) + '\n');
    return;
  }
  const deadline = Date.now() + 120000;
  let job = submitted.response;
  while (!['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED'].includes(job.state)) {
    if (Date.now() > deadline) throw new Error('job did not finish in time');
    await new Promise((r) => setTimeout(r, 100));  // poll interval
    const got = await call(client, 'GetJob', { id: job.id }, 10000);
    if (got.error) throw new Error(JSON.stringify(got.error));
    job = got.response;
  }
  client.close();
  process.stdout.write(JSON.stringify({ submitted: submitted.response, final: job }) + '\n');
}

main().then(() => process.exit(0)).catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + '\n');
  process.exit(1);
});
