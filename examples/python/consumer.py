#!/usr/bin/env python3
"""Consumes the worker's results (and, with --dead-letters, its dead letters),
validating each message against schemas/result.v1.schema.json or
schemas/dead_letter.v1.schema.json. Prints one JSON line per message on stdout.

By default the queue is exclusive and deleted on exit, which suits a test or a
look at the traffic. A real consumer gives --queue: a durable quorum queue of
its own, bound once, that keeps results while the consumer is down.

Results come at least once: a job_id seen before is acknowledged and reported
as a duplicate (this example remembers job_ids in memory; a service would keep
them where it stores the verdicts). A message that does not match its schema
is rejected without requeue (give the queue a dead-letter exchange to keep
such messages) and makes the exit status non-zero.

With --expect the command waits for those job_ids and exits 0 once each has a
result, 1 on a dead letter for one of them, an invalid message or --timeout.

  consumer.py --queue billing.liveness-results --binding 'document.*'
  consumer.py --dead-letters --expect kyc-42:front --timeout 60
"""

import argparse
import json
import sys
import time

import pika
import pika.exceptions

from contracts import common_args, names, problems, validator


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_args(ap)
    ap.add_argument("--queue", help="durable queue of this consumer (default: an exclusive, temporary one)")
    ap.add_argument("--binding", action="append",
                    help="results routing key pattern, <check>.<verdict> (repeatable; default '#': all)")
    ap.add_argument("--dead-letters", action="store_true", help="also consume dead letters (routing key = failure class)")
    ap.add_argument("--expect", action="append", default=[], metavar="JOB_ID", help="wait for these job_ids, then exit")
    ap.add_argument("--timeout", type=float, default=0, help="with --expect: give up after this many seconds")
    args = ap.parse_args()

    exchanges = names(args.prefix)
    validators = {"result": validator("result", args.schemas), "dead_letter": validator("dead_letter", args.schemas)}
    try:
        conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    except pika.exceptions.AMQPError as e:
        sys.exit(f"cannot connect to RabbitMQ: {e!r}")
    ch = conn.channel()
    ch.basic_qos(prefetch_count=100)

    def declare(name):
        if name:
            ch.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})
            return name
        return ch.queue_declare("", exclusive=True).method.queue

    sources = [("result", exchanges["results"], args.queue, args.binding or ["#"])]
    if args.dead_letters:
        sources.append(("dead_letter", exchanges["dead"], args.queue and f"{args.queue}.dead", ["#"]))

    seen = set()
    waiting = set(args.expect)
    failures = []

    def handle(kind, ch, method, props, body):
        out = {"kind": kind, "routing_key": method.routing_key}
        try:
            message = json.loads(body)
            errors = problems(validators[kind], message)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            message, errors = None, [f"not JSON: {e}"]
        if errors:
            out.update(valid=False, errors=errors)
            failures.append(f"invalid {kind} ({method.routing_key}): {'; '.join(errors)}")
            ch.basic_reject(method.delivery_tag, requeue=False)
            print(json.dumps(out), flush=True)
            return
        job_id = message.get("job_id")
        out.update(valid=True, job_id=job_id, correlation_id=props.correlation_id)
        if kind == "result":
            out.update(verdict=message["verdict"], provider=message["provider"], score=message["score"],
                       metadata=message.get("metadata"))
        else:
            out.update(failure_class=message["failure"]["class"], message=message["failure"]["message"])
            if job_id in waiting:
                failures.append(f"job {job_id} was dead-lettered: {message['failure']['message']}")
        if (kind, job_id) in seen:
            out["duplicate"] = True
        seen.add((kind, job_id))
        # Acknowledged once handled: a crash before this line means redelivery, not loss.
        ch.basic_ack(method.delivery_tag)
        if kind == "result":
            waiting.discard(job_id)
        print(json.dumps(out), flush=True)

    try:
        for kind, exchange, queue, bindings in sources:
            q = declare(queue)
            for key in bindings:
                ch.queue_bind(q, exchange, routing_key=key)
            ch.basic_consume(q, lambda c, m, p, b, kind=kind: handle(kind, c, m, p, b))
            print(json.dumps({"kind": "ready", "queue": q, "exchange": exchange, "bindings": bindings}), flush=True)
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            sys.exit(f"an exchange does not exist ({e.reply_text}): start the worker once, or check --prefix")
        sys.exit(f"the broker closed the channel: {e.reply_code} {e.reply_text}")

    deadline = time.monotonic() + args.timeout if args.timeout else None
    try:
        # Without --expect: until interrupted, whatever arrives.
        while (waiting or not args.expect) and not (args.expect and failures):
            if deadline and time.monotonic() > deadline:
                failures.append(f"timed out after {args.timeout:g}s waiting for {', '.join(sorted(waiting))}")
                break
            conn.process_data_events(time_limit=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if conn.is_open:
            conn.close()
    for f in failures:
        print(f, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
