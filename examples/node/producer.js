#!/usr/bin/env node
'use strict';
// Publishes one liveness verification job to the worker's jobs exchange.
//
// The job is validated against schemas/job.v1.schema.json before it is sent (an
// invalid job is never published), then published persistent, on a confirm channel
// with the mandatory flag: the command exits 0 only once the broker has confirmed
// that the job is stored in a queue.

const { parseArgs } = require('node:util');
const amqp = require('amqplib');
const { validator, problems, names, commonOptions, fail } = require('./contracts');

const USAGE = `usage: producer.js --job-id ID --check document|face --image s3://bucket/key
                   [--back-image s3://...] [--provider argos|intellicheck|didit]
                   [--signals a,b] [--metadata JSON] [--correlation-id ID]
                   [--amqp-url URL (env AMQP_URL)] [--prefix P (env LIVENESS_BROKER__PREFIX)]
                   [--schemas DIR]`;

async function main() {
  let opts;
  try {
    ({ values: opts } = parseArgs({
      options: {
        ...commonOptions,
        'job-id': { type: 'string' },
        check: { type: 'string' },
        image: { type: 'string' },
        'back-image': { type: 'string' },
        provider: { type: 'string' },
        signals: { type: 'string' },
        metadata: { type: 'string' },
        'correlation-id': { type: 'string' },
      },
    }));
  } catch (e) {
    fail(`${e.message}\n${USAGE}`);
  }
  if (opts.help) {
    console.log(USAGE);
    return;
  }
  for (const required of ['job-id', 'check', 'image']) {
    if (!opts[required]) fail(`--${required} is required\n${USAGE}`);
  }

  const job = { schema: 'liveness.job.v1', job_id: opts['job-id'], check: opts.check, image: opts.image };
  if (opts['back-image']) job.back_image = opts['back-image'];
  if (opts.provider) job.provider = opts.provider;
  if (opts.signals) job.signals = opts.signals.split(',');
  if (opts.metadata) {
    try {
      job.metadata = JSON.parse(opts.metadata);
    } catch (e) {
      fail(`--metadata is not JSON: ${e.message}`);
    }
  }
  const errors = problems(validator('job', opts.schemas), job);
  if (errors.length) {
    fail(`the job does not match schemas/job.v1.schema.json, not published:\n  ${errors.join('\n  ')}`);
  }

  const exchange = names(opts.prefix).jobs;
  let conn;
  try {
    conn = await amqp.connect(opts['amqp-url']);
  } catch (e) {
    fail(`cannot connect to RabbitMQ: ${e.message}`);
  }
  // Connection errors also fail the pending operations below, which report them; the
  // listener keeps them from being thrown as unhandled 'error' events.
  conn.on('error', () => {});
  try {
    const ch = await conn.createConfirmChannel();
    let channelError = null;
    ch.on('error', (e) => { channelError = e; });
    let returned = false;
    // With mandatory, an unroutable job comes back (basic.return) before its confirm.
    ch.on('return', () => { returned = true; });
    ch.publish(exchange, 'job', Buffer.from(JSON.stringify(job)), {
      mandatory: true,
      persistent: true,
      contentType: 'application/json',
      messageId: job.job_id,
      correlationId: opts['correlation-id'],
      // The worker measures queue wait from this (liveness_job_queue_wait_seconds).
      timestamp: Math.floor(Date.now() / 1000),
      appId: 'liveness-example-producer-node',
    });
    try {
      await ch.waitForConfirms();
    } catch (e) {
      if (channelError && channelError.code === 404) {
        fail(`exchange ${exchange} does not exist: start the worker once (it declares its exchanges), or check --prefix`);
      }
      fail(`the broker did not confirm job ${job.job_id}: ${(channelError || e).message}`);
    }
    if (returned) {
      fail(`job ${job.job_id} was not routed to any queue: is the worker's jobs queue bound to ${exchange}?`);
    }
    console.log(JSON.stringify({ published: job.job_id, exchange, routing_key: 'job' }));
  } finally {
    await conn.close().catch(() => {});
  }
}

main().catch((e) => fail(e.stack || String(e)));
