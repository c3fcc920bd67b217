#!/usr/bin/env node
// Probes a running quantd with third-party clients only (grpc-js +
// grpc-js-reflection-client): nothing here comes from quantd's own .proto
// files; every descriptor is fetched through server reflection.
//
//   node reflection_probe.js HOST:PORT
//
// Prints one JSON object with what it saw; the GoogleTest in
// tests/integration/ asserts on it. Exits 1 (with {"error": ...}) if a step
// throws.

'use strict';

const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');

const DEADLINE_MS = 10000;

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

// Calls a unary method and resolves to {code, details, response}.
function callUnary(client, method, request) {
  return new Promise((resolve) => {
    client[method](request, { deadline: deadline() }, (err, response) => {
      if (err) {
        resolve({ code: err.code, details: err.details || '' });
      } else {
        resolve({ code: 0, details: '', response });
      }
    });
  });
}

async function main() {
  const target = process.argv[2];
  if (!target) throw new Error('usage: reflection_probe.js HOST:PORT');
  const insecure = grpc.credentials.createInsecure();
  const reflection = new GrpcReflection(target, insecure);
  const report = {};

  // 1. list services
  report.services = await reflection.listServices('*', { deadline: deadline() });

  // 2. describe QuantizationService and QuantizeJob's request type
  const quantd = await reflection.getDescriptorBySymbol('quantd.v1.QuantizationService',
                                                        { deadline: deadline() });
  const root = quantd.getProtobufJsRoot();
  const service = root.lookupService('quantd.v1.QuantizationService');
  report.quantd_methods = Object.keys(service.methods).sort();
  const quantize = service.methods.QuantizeJob;
  const requestType = root.lookupType(quantize.requestType);
  report.quantize_job = {
    request_type: requestType.fullName.replace(/^\./, ''),
    response_type: root.lookupType(quantize.responseType).fullName.replace(/^\./, ''),
    request_fields: requestType.fieldsArray.map((f) => f.name),
  };

  // 3. describe the health service and call Check through it
  const health = await reflection.getDescriptorBySymbol('grpc.health.v1.Health',
                                                        { deadline: deadline() });
  const healthRoot = health.getProtobufJsRoot();
  report.health_methods = Object.keys(healthRoot.lookupService('grpc.health.v1.Health').methods).sort();
  const healthPkg = health.getPackageObject({ keepCase: true, enums: String, longs: String });
  const healthClient = new healthPkg.grpc.health.v1.Health(target, insecure);
  report.health_check = {};
  for (const name of ['', 'quantd.v1.QuantizationService']) {
    const result = await callUnary(healthClient, 'Check', { service: name });
    report.health_check[name === '' ? 'server' : name] = result.code === 0
      ? result.response.status : `error ${result.code}: ${result.details}`;
  }
  const unknown = await callUnary(healthClient, 'Check', { service: 'no.such.Service' });
  report.health_check_unknown_code = unknown.code;
  healthClient.close();

  // 4. call an unimplemented RPC through the reflected descriptor
  const quantdPkg = quantd.getPackageObject({ keepCase: true, enums: String, longs: String });
  const quantdClient = new quantdPkg.quantd.v1.QuantizationService(target, insecure);
  const getJob = await callUnary(quantdClient, 'GetJob', { id: 'job-does-not-exist' });
  report.get_job = { code: getJob.code, details: getJob.details };
  quantdClient.close();

  process.stdout.write(JSON.stringify(report) + '\n');
}

main().then(() => process.exit(0)).catch((err) => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack || err) }) + '\n');
  process.exit(1);
});
