'use strict';
// The worker's message contracts: the JSON Schemas committed in schemas/, the
// exchange names and the AMQP settings shared by producer.js and consumer.js.

const fs = require('node:fs');
const path = require('node:path');
const Ajv2020 = require('ajv/dist/2020');

const DEFAULT_SCHEMAS = path.resolve(__dirname, '..', '..', 'schemas');
const DEFAULT_AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672/%2f';

function unsigned(bits) {
  const max = 2n ** BigInt(bits);
  return (v) => Number.isInteger(v) && v >= 0 && BigInt(v) < max;
}

// strict: a schema keyword Ajv does not know is an error, not silently ignored.
// The number formats are those the Rust schema generator writes.
const ajv = new Ajv2020({ strict: true, allErrors: true, allowUnionTypes: true });
ajv.addFormat('uint16', { type: 'number', validate: unsigned(16) });
ajv.addFormat('uint32', { type: 'number', validate: unsigned(32) });
ajv.addFormat('uint64', { type: 'number', validate: unsigned(64) });
ajv.addFormat('double', { type: 'number', validate: Number.isFinite });

// A validator for schemas/<name>.v1.schema.json (job, result, dead_letter).
function validator(name, schemasDir) {
  const dir = schemasDir || process.env.LIVENESS_SCHEMAS || DEFAULT_SCHEMAS;
  const schema = JSON.parse(fs.readFileSync(path.join(dir, `${name}.v1.schema.json`), 'utf8'));
  return ajv.compile(schema);
}

// Every violation of the schema, one line each; empty when the message is valid.
function problems(validate, message) {
  if (validate(message)) return [];
  return validate.errors.map((e) => `${e.instancePath || '(root)'}: ${e.message}${e.params && e.params.allowedValues ? ` ${JSON.stringify(e.params.allowedValues)}` : ''}`);
}

// Exchange names under the worker's broker.prefix ('' for none).
function names(prefix) {
  const p = prefix ? `${prefix}.` : '';
  return { jobs: `${p}liveness.jobs`, results: `${p}liveness.results`, dead: `${p}liveness.dead` };
}

const commonOptions = {
  'amqp-url': { type: 'string', default: process.env.AMQP_URL || DEFAULT_AMQP_URL },
  prefix: { type: 'string', default: process.env.LIVENESS_BROKER__PREFIX || '' },
  schemas: { type: 'string' },
  help: { type: 'boolean', short: 'h', default: false },
};

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

module.exports = { validator, problems, names, commonOptions, fail, DEFAULT_SCHEMAS };
