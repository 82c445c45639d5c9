#!/usr/bin/env python3
"""Publishes one liveness verification job to the worker's jobs exchange.

The job is validated against schemas/job.v1.schema.json before it is sent (an
invalid job is never published), then published persistent, with publisher
confirms and the mandatory flag: the command exits 0 only once the broker has
confirmed that the job is stored in a queue.

  producer.py --job-id kyc-42:front --check document \\
      --image s3://kyc-id-images/42/front.jpg --metadata '{"applicant": "42"}'
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
    ap.add_argument("--job-id", required=True, help="your id for the job; the idempotency key")
    ap.add_argument("--check", required=True, choices=["document", "face"])
    ap.add_argument("--image", required=True, help="s3://bucket/key of the document front or the selfie")
    ap.add_argument("--back-image", help="s3://bucket/key of the document back")
    ap.add_argument("--provider", help="argos, intellicheck or didit (default: the worker's per check)")
    ap.add_argument("--signals", help="comma-separated document signals (default: all)")
    ap.add_argument("--metadata", help="JSON object echoed back in the result")
    ap.add_argument("--correlation-id", help="AMQP correlation_id, copied onto the result")
    args = ap.parse_args()

    job = {"schema": "liveness.job.v1", "job_id": args.job_id, "check": args.check, "image": args.image}
    if args.back_image:
        job["back_image"] = args.back_image
    if args.provider:
        job["provider"] = args.provider
    if args.signals:
        job["signals"] = args.signals.split(",")
    if args.metadata:
        try:
            job["metadata"] = json.loads(args.metadata)
        except json.JSONDecodeError as e:
            sys.exit(f"--metadata is not JSON: {e}")

    errors = problems(validator("job", args.schemas), job)
    if errors:
        sys.exit("the job does not match schemas/job.v1.schema.json, not published:\n  " + "\n  ".join(errors))

    exchange = names(args.prefix)["jobs"]
    body = json.dumps(job, separators=(",", ":")).encode()
    props = pika.BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=args.job_id,
        correlation_id=args.correlation_id,
        # The worker measures queue wait from this (liveness_job_queue_wait_seconds).
        timestamp=int(time.time()),
        app_id="liveness-example-producer-python",
    )
    try:
        conn = pika.BlockingConnection(pika.URLParameters(args.amqp_url))
    except pika.exceptions.AMQPError as e:
        sys.exit(f"cannot connect to RabbitMQ: {e!r}")
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        # mandatory: a job no queue would take comes back as an error instead of vanishing.
        ch.basic_publish(exchange, "job", body, props, mandatory=True)
    except pika.exceptions.UnroutableError:
        sys.exit(f"job {args.job_id} was not routed to any queue: is the worker's jobs queue bound to {exchange}?")
    except pika.exceptions.NackError:
        sys.exit(f"the broker refused job {args.job_id} (nack); publish it again")
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            sys.exit(f"exchange {exchange} does not exist: start the worker once (it declares its exchanges), "
                     "or check --prefix")
        sys.exit(f"the broker closed the channel: {e.reply_code} {e.reply_text}")
    finally:
        if conn.is_open:
            conn.close()
    print(json.dumps({"published": args.job_id, "exchange": exchange, "routing_key": "job"}))


if __name__ == "__main__":
    main()
