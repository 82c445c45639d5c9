#!/usr/bin/env node
'use strict';
// Consumes the worker's results (and, with --dead-letters, its dead letters),
// validating each message against schemas/result.v1.schema.json or
// schemas/dead_letter.v1.schema.json. Prints one JSON line per message on stdout.
//
// By default the queue is exclusive and deleted on exit, which suits a test or a
// look at the traffic. A real consumer gives --queue: a durable quorum queue of its
// own, bound once, that keeps results while the consumer is down.
//
// Results come at least once: a job_id seen before is acknowledged and reported as
// a duplicate (this example remembers job_ids in memory; a service would keep them
// where it stores the verdicts). A message that does not match its schema is
// rejected without requeue (give the queue a dead-letter exchange to keep such
// messages) and makes the exit status non-zero.
//
// With --expect the command waits for those job_ids and exits 0 once each has a
// result, 1 on a dead letter for one of them, an invalid message or --timeout.

const { parseArgs } = require('node:util');
const amqp = require('amqplib');
const { validator, problems, names, commonOptions, fail } = require('./contracts');

const USAGE = `usage: consumer.js [--queue NAME] [--binding KEY]... [--dead-letters]
                   [--expect JOB_ID]... [--timeout SECONDS]
                   [--amqp-url URL (env AMQP_URL)] [--prefix P (env LIVENESS_BROKER__PREFIX)]
                   [--schemas DIR]`;

async function main() {
  let opts;
  try {
    ({ values: opts } = parseArgs({
      options: {
        ...commonOptions,
        queue: { type: 'string' },
        binding: { type: 'string', multiple: true },
        'dead-letters': { type: 'boolean', default: false },
        expect: { type: 'string', multiple: true, default: [] },
        timeout: { type: 'string', default: '0' },
      },
    }));
  } catch (e) {
    fail(`${e.message}\n${USAGE}`);
  }
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  const timeout = Number(opts.timeout);
  if (!Number.isFinite(timeout) || timeout < 0) fail(`--timeout must be a number of seconds, got ${opts.timeout}`);

  const exchanges = names(opts.prefix);
  const validators = { result: validator('result', opts.schemas), dead_letter: validator('dead_letter', opts.schemas) };
  let conn;
  try {
    conn = await amqp.connect(opts['amqp-url']);
  } catch (e) {
    fail(`cannot connect to RabbitMQ: ${e.message}`);
  }
  // Reported through 'close' and the failed operations instead.
  conn.on('error', () => {});
  const ch = await conn.createChannel();
  await ch.prefetch(100);

  const expecting = opts.expect.length > 0;
  const waiting = new Set(opts.expect);
  const seen = new Set();
  const failures = [];
  let finish;
  const finished = new Promise((resolve) => { finish = resolve; });
  const settleIfDone = () => {
    if (expecting && (failures.length || waiting.size === 0)) finish();
  };
  ch.on('error', (e) => { failures.push(`channel error: ${e.message}`); finish(); });
  conn.on('close', () => finish());

  function handle(kind, msg) {
    const out = { kind, routing_key: msg.fields.routingKey };
    let message = null;
    let errors;
    try {
      message = JSON.parse(msg.content.toString('utf8'));
      errors = problems(validators[kind], message);
    } catch (e) {
      errors = [`not JSON: ${e.message}`];
    }
    if (errors.length) {
      Object.assign(out, { valid: false, errors });
      failures.push(`invalid ${kind} (${msg.fields.routingKey}): ${errors.join('; ')}`);
      ch.reject(msg, false);
      console.log(JSON.stringify(out));
      settleIfDone();
      return;
    }
    const jobId = message.job_id;
    Object.assign(out, { valid: true, job_id: jobId, correlation_id: msg.properties.correlationId });
    if (kind === 'result') {
      Object.assign(out, { verdict: message.verdict, provider: message.provider, score: message.score, metadata: message.metadata });
    } else {
      Object.assign(out, { failure_class: message.failure.class, message: message.failure.message });
      if (waiting.has(jobId)) failures.push(`job ${jobId} was dead-lettered: ${message.failure.message}`);
    }
    if (seen.has(`${kind}/${jobId}`)) out.duplicate = true;
    seen.add(`${kind}/${jobId}`);
    // Acknowledged once handled: a crash before this line means redelivery, not loss.
    ch.ack(msg);
    if (kind === 'result') waiting.delete(jobId);
    console.log(JSON.stringify(out));
    settleIfDone();
  }

  const sources = [['result', exchanges.results, opts.queue, opts.binding || ['#']]];
  if (opts['dead-letters']) sources.push(['dead_letter', exchanges.dead, opts.queue && `${opts.queue}.dead`, ['#']]);
  try {
    for (const [kind, exchange, queue, bindings] of sources) {
      const q = queue
        ? (await ch.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': 'quorum' } })).queue
        : (await ch.assertQueue('', { exclusive: true })).queue;
      for (const key of bindings) await ch.bindQueue(q, exchange, key);
      await ch.consume(q, (msg) => msg && handle(kind, msg));
      console.log(JSON.stringify({ kind: 'ready', queue: q, exchange, bindings }));
    }
  } catch (e) {
    if (e.code === 404) fail(`an exchange does not exist (${e.message}): start the worker once, or check --prefix`);
    fail(`cannot set up the queues: ${e.message}`);
  }

  let timer;
  if (expecting && timeout > 0) {
    timer = setTimeout(() => {
      failures.push(`timed out after ${timeout}s waiting for ${[...waiting].sort().join(', ')}`);
      finish();
    }, timeout * 1000);
  }
  process.once('SIGINT', finish);
  process.once('SIGTERM', finish);
  await finished;
  clearTimeout(timer);
  await conn.close().catch(() => {});
  for (const f of failures) process.stderr.write(`${f}\n`);
  process.exit(failures.length ? 1 : 0);
}

main().catch((e) => fail(e.stack || String(e)));
