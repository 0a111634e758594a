#!/usr/bin/env node
// A client in another language that knows the sandbox only from its .proto files.
//
//   node health_check.js ADDRESS CA_PATH      e.g. node health_check.js 127.0.0.1:50051 sandbox-data/tls/ca.pem
//
// It loads the standard gRPC health contract and the sandbox's ApplicantService
// contract with @grpc/proto-loader (no generated code), connects over TLS trusting
// only the CA from `sandbox init`, then
//   1. calls grpc.health.v1.Health/Check (public, unsigned), expecting SERVING;
//   2. calls sandbox.v1.ApplicantService/WhoAmI without the Ed25519 request
//      signature, expecting the server to refuse it with UNAUTHENTICATED (16).
// It prints one JSON line, e.g.
//   {"health":"SERVING","sandbox_methods":8,"unsigned_call":"UNAUTHENTICATED","unsigned_error_code":"SIGNATURE_MISSING"}
// and exits 0 when all of that held, 1 otherwise (2 on bad usage).
//
// Install with `npm ci` (the lock file pins @grpc/grpc-js and @grpc/proto-loader); tests/test_interop_node.py
// does that and runs this against a real server. With an IP address (127.0.0.1:PORT) Node prints a DEP0123
// warning because grpc-js passes the IP as the TLS server name (grpc-node#1919); verification still uses the
// certificate's IP SAN. `localhost:PORT` avoids the warning.
"use strict";

const fs = require("fs");
const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const ROOT = path.resolve(__dirname, "..", "..");
const HEALTH_PROTO = "protos/grpc/health/v1/health.proto";
const APPLICANT_PROTO = "protos/sandbox/v1/applicant.proto";
const DEADLINE_MS = 10000;
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
  // The sandbox protos import each other as "protos/sandbox/v1/common.proto".
  includeDirs: [ROOT],
};

function deadline() {
  return new Date(Date.now() + DEADLINE_MS);
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, new grpc.Metadata(), { deadline: deadline() }, (err, response) =>
      err ? reject(err) : resolve(response));
  });
}

function statusName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

async function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write("usage: node health_check.js ADDRESS CA_PATH\n");
    return 2;
  }
  const [address, caPath] = argv;
  const credentials = grpc.credentials.createSsl(fs.readFileSync(caPath));

  const healthDef = protoLoader.loadSync(HEALTH_PROTO, LOADER_OPTIONS);
  const applicantDef = protoLoader.loadSync(APPLICANT_PROTO, LOADER_OPTIONS);
  const serviceDef = applicantDef["sandbox.v1.ApplicantService"];
  if (!serviceDef) {
    throw new Error("sandbox.v1.ApplicantService not found in " + APPLICANT_PROTO);
  }
  const sandboxMethods = Object.keys(serviceDef).length;

  const Health = grpc.loadPackageDefinition(healthDef).grpc.health.v1.Health;
  const ApplicantService = grpc.loadPackageDefinition(applicantDef).sandbox.v1.ApplicantService;
  const health = new Health(address, credentials);
  const applicant = new ApplicantService(address, credentials);
  const result = { health: null, sandbox_methods: sandboxMethods, unsigned_call: null, unsigned_error_code: null };
  try {
    const check = await unary(health, "Check", { service: "" });
    result.health = check.status;

    try {
      await unary(applicant, "WhoAmI", {});
      result.unsigned_call = "OK";
    } catch (err) {
      if (err.code === undefined) throw err;
      result.unsigned_call = statusName(err.code);
      const trailer = err.metadata ? err.metadata.get("x-sandbox-error") : [];
      result.unsigned_error_code = trailer.length ? String(trailer[0]) : null;
    }
  } finally {
    health.close();
    applicant.close();
  }

  process.stdout.write(JSON.stringify(result) + "\n");
  const ok = result.health === "SERVING" && result.sandbox_methods > 0 &&
    result.unsigned_call === statusName(grpc.status.UNAUTHENTICATED);
  return ok ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write("health_check failed: " + (err && err.stack ? err.stack : String(err)) + "\n");
    process.exitCode = 1;
  },
);
