"""The Python baseline of the benchmark: the worker a team would write instead.

A plain, competent pika + boto3 + requests implementation of the same job as
`liveness-worker run` for Argos document checks, used by bench/bench.py to
measure throughput, CPU per job and memory side by side with the Rust worker.
It is not part of the product and handles only what the benchmark sends:

- consumes `<prefix>.liveness.jobs` with manual acks and prefetch = pool size;
- runs each job on a thread pool of `LIVENESS_WORKER__CONCURRENCY` threads:
  S3 GetObject (one shared boto3 client, its connection pool sized to the
  pool), SHA-256 and content-type sniffing, base64, one POST to Argos
  `/modules/document` (one requests.Session per thread, keep-alive), the
  score bands 30/60 into a `liveness.result.v1` message;
- publishes the result on a confirm channel and acks the job only after the
  confirm (pika is not thread-safe, so both happen on the connection's thread
  through `add_callback_threadsafe`);
- retries transient vendor and S3 failures three times with backoff and
  dead-letters what it cannot process, so nothing is lost silently.

It reads the Rust worker's environment variables (LIVENESS_BROKER__URL,
LIVENESS_BROKER__PREFIX, LIVENESS_S3__*, LIVENESS_PROVIDERS__ARGOS__BASE_URL
and __API_KEY, LIVENESS_WORKER__CONCURRENCY) and stops on SIGTERM after the
jobs it holds are done. It has no results store (no pay-once lookup): the
benchmark compares it with the Rust worker run without `results.bucket`.

`python bench/python_worker.py --self-check` checks the pure helpers offline.
"""

import base64
import concurrent.futures
import datetime
import functools
import hashlib
import json
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("python_worker")

SIGNAL_FIELDS = (
    ("screen_replay", "sr", "screenReplay"),
    ("printed_copy", "pc", "paperPrinted"),
    ("portrait_substitution", "ps", "replacePortraits"),
)
LIVE_ABOVE, SPOOF_AT_OR_BELOW = 60, 30


def names(prefix):
    """Broker names with the prefix applied, as the Rust worker names them."""
    p = f"{prefix}." if prefix else ""
    return {
        "jobs_exchange": p + "liveness.jobs",
        "jobs_queue": p + "liveness.jobs",
        "results_exchange": p + "liveness.results",
        "results_queue": p + "liveness.results",
        "dead_exchange": p + "liveness.dead",
        "dead_queue": p + "liveness.dead",
        "poison_queue": p + "liveness.poison",
    }


def declare_topology(ch, prefix, delivery_limit=20):
    """The Rust worker's jobs/results/dead topology, with the same arguments
    (so either worker can start first on the same prefix)."""
    n = names(prefix)
    quorum = {"x-queue-type": "quorum"}
    for ex, kind in (
        (n["jobs_exchange"], "direct"),
        (n["results_exchange"], "topic"),
        (n["dead_exchange"], "topic"),
    ):
        ch.exchange_declare(ex, exchange_type=kind, durable=True)
    ch.queue_declare(n["poison_queue"], durable=True, arguments=quorum)
    jobs_args = dict(
        quorum,
        **{
            "x-delivery-limit": delivery_limit,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": n["poison_queue"],
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        },
    )
    ch.queue_declare(n["jobs_queue"], durable=True, arguments=jobs_args)
    ch.queue_bind(n["jobs_queue"], n["jobs_exchange"], routing_key="job")
    ch.queue_declare(n["results_queue"], durable=True, arguments=quorum)
    ch.queue_bind(n["results_queue"], n["results_exchange"], routing_key="#")
    ch.queue_declare(n["dead_queue"], durable=True, arguments=quorum)
    ch.queue_bind(n["dead_queue"], n["dead_exchange"], routing_key="#")


def parse_s3_uri(uri):
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ValueError(f"image must be an s3:// URI, got {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    if not bucket or not key:
        raise ValueError(f"image {uri!r} has no bucket or key")
    return bucket, key


def sniff(data):
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def band(score):
    if score > LIVE_ABOVE:
        return "live"
    if score <= SPOOF_AT_OR_BELOW:
        return "spoof"
    return "review"


def normalize(answer):
    """Argos /document 200 answer -> (verdict, score, signals, reasons)."""
    result = answer.get("result") or {}
    signals, reasons, verdicts, scores = [], [], [], []
    for name, _, wire in SIGNAL_FIELDS:
        got = result.get(wire)
        if got is None:
            signals.append({"name": name, "verdict": "not_performed", "score": None,
                            "vendor_score": None})
            reasons.append(f"{name} was not performed by argos")
            continue
        vs = float(got["liveness_score"])
        v = band(vs)
        verdicts.append(v)
        scores.append(vs / 100)
        signals.append({"name": name, "verdict": v, "score": vs / 100, "vendor_score": vs})
        reasons.append(f"{name} scored {vs:g}/100 ({v})")
    if "spoof" in verdicts:
        verdict = "spoof"
    elif "review" in verdicts:
        verdict = "review"
    elif verdicts:
        verdict = "live"
    else:
        verdict = "inconclusive"
    return verdict, (min(scores) if scores else None), signals, reasons


def now_rfc3339():
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class Transient(Exception):
    pass


class Permanent(Exception):
    def __init__(self, cls, message):
        super().__init__(message)
        self.cls = cls


class Worker:
    def __init__(self, env):
        import boto3
        import botocore.config
        import pika

        self.pika = pika
        self.concurrency = int(env.get("LIVENESS_WORKER__CONCURRENCY", "32"))
        self.names = names(env.get("LIVENESS_BROKER__PREFIX", ""))
        self.argos_url = env["LIVENESS_PROVIDERS__ARGOS__BASE_URL"].rstrip("/") + "/document"
        self.api_key = env["LIVENESS_PROVIDERS__ARGOS__API_KEY"]
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}"
        self.s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=env.get("LIVENESS_S3__ENDPOINT") or None,
            region_name=env.get("LIVENESS_S3__REGION", "us-east-1"),
            aws_access_key_id=env.get("LIVENESS_S3__ACCESS_KEY_ID") or None,
            aws_secret_access_key=env.get("LIVENESS_S3__SECRET_ACCESS_KEY") or None,
            config=botocore.config.Config(
                max_pool_connections=self.concurrency,
                s3={"addressing_style": "path"},
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )
        self.local = threading.local()
        self.pool = concurrent.futures.ThreadPoolExecutor(self.concurrency)
        params = pika.URLParameters(env.get("LIVENESS_BROKER__URL",
                                            "amqp://guest:guest@127.0.0.1:5672/%2f"))
        params.heartbeat = 60
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.ch.basic_qos(prefetch_count=self.concurrency)
        self.in_flight = 0
        self.lock = threading.Lock()

    def session(self):
        import requests

        s = getattr(self.local, "session", None)
        if s is None:
            s = requests.Session()
            s.headers["x-api-key"] = self.api_key
            self.local.session = s
        return s

    # -- on a pool thread ---------------------------------------------------

    def handle(self, tag, props, body):
        started = time.monotonic()
        try:
            job = json.loads(body)
            if not isinstance(job, dict) or job.get("schema") != "liveness.job.v1":
                raise Permanent("invalid_job", "not a liveness.job.v1 object")
            if job.get("check") != "document":
                raise Permanent("invalid_job", "this baseline does document checks only")
            bucket, key = parse_s3_uri(job.get("image"))
            data, fetch_ms = self.retrying(lambda: self.fetch(bucket, key))
            ctype = sniff(data)
            if ctype is None:
                raise Permanent("image_rejected", "not a JPEG, PNG or WebP image")
            sha = hashlib.sha256(data).hexdigest()
            payload = {
                "idImage": base64.b64encode(data).decode("ascii"),
                "pipelines": {"sr": True, "pc": True, "ps": True},
                "useUpcomingVersion": False,
            }
            attempts = [0]
            answer, vendor_ms = self.retrying(lambda: self.call_argos(payload, attempts))
            verdict, score, signals, reasons = normalize(answer)
            result = {
                "schema": "liveness.result.v1",
                "job_id": job["job_id"],
                "check": "document",
                "provider": "argos",
                "verdict": verdict,
                "score": score,
                "signals": signals,
                "reasons": reasons,
                "warnings": [],
                "vendor": {"transaction_id": answer.get("transactionId"),
                           "engine_version": answer.get("engineVersion")},
                "image": {"uri": job["image"], "bytes": len(data), "sha256": sha,
                          "content_type": ctype},
                "attempts": attempts[0],
                "timings_ms": {"fetch": fetch_ms, "vendor": vendor_ms,
                               "total": int((time.monotonic() - started) * 1000)},
                "completed_at": now_rfc3339(),
            }
            if "metadata" in job:
                result["metadata"] = job["metadata"]
            out = ("results_exchange", f"document.{verdict}", result)
            log.info("job %s done: %s", job["job_id"], verdict)
        except Permanent as e:
            out = ("dead_exchange", e.cls, self.dead_letter(body, e.cls, str(e)))
            log.warning("job dead-lettered: %s", e)
        except Exception as e:  # noqa: BLE001 - a job must never vanish
            out = ("dead_exchange", "retries_exhausted",
                   self.dead_letter(body, "retries_exhausted", str(e)))
            log.warning("job failed: %s", e)
        exchange, rk, msg = out
        self.conn.add_callback_threadsafe(
            functools.partial(self.publish_and_ack, tag, props, exchange, rk, json.dumps(msg)))

    def fetch(self, bucket, key):
        import botocore.exceptions

        t = time.monotonic()
        try:
            obj = self.s3.get_object(Bucket=bucket, Key=key)
            data = obj["Body"].read()
        except botocore.exceptions.ClientError as e:
            code = e.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "NoSuchBucket"):
                raise Permanent("image_not_found", f"s3://{bucket}/{key}: {code}") from e
            raise Transient(str(e)) from e
        return data, int((time.monotonic() - t) * 1000)

    def call_argos(self, payload, attempts):
        import requests

        t = time.monotonic()
        attempts[0] += 1
        try:
            r = self.session().post(self.argos_url, json=payload, timeout=30)
        except requests.RequestException as e:
            raise Transient(f"argos request failed: {e}") from e
        if r.status_code == 200:
            return r.json(), int((time.monotonic() - t) * 1000)
        if r.status_code in (408, 429) or r.status_code >= 500:
            raise Transient(f"argos answered HTTP {r.status_code}")
        raise Permanent("vendor_rejected_request", f"argos answered HTTP {r.status_code}")

    @staticmethod
    def retrying(op, tries=3):
        for i in range(tries):
            try:
                return op()
            except Transient:
                if i + 1 == tries:
                    raise
                time.sleep(0.25 * 2**i)

    def dead_letter(self, body, cls, message):
        try:
            job = json.loads(body)
        except ValueError:
            job = None
        return {
            "schema": "liveness.dead_letter.v1",
            "job_id": job.get("job_id") if isinstance(job, dict) else None,
            "job": job if isinstance(job, dict) else None,
            "raw_body_base64": None if isinstance(job, dict)
            else base64.b64encode(body[:65536]).decode(),
            "failure": {"class": cls, "message": message,
                        "retryable": cls in ("image_not_found", "retries_exhausted")},
            "attempts": 0,
            "failed_at": now_rfc3339(),
            "worker": self.worker_id,
        }

    # -- on the connection's thread ------------------------------------------

    def publish_and_ack(self, tag, props, exchange, rk, payload):
        try:
            self.ch.basic_publish(
                self.names[exchange], rk, payload.encode(),
                self.pika.BasicProperties(content_type="application/json", delivery_mode=2,
                                          message_id=props.message_id,
                                          correlation_id=props.correlation_id))
            self.ch.basic_ack(tag)
        except self.pika.exceptions.NackError:
            self.ch.basic_nack(tag, requeue=True)
        with self.lock:
            self.in_flight -= 1

    def on_message(self, ch, method, props, body):
        with self.lock:
            self.in_flight += 1
        self.pool.submit(self.handle, method.delivery_tag, props, body)

    def run(self):
        stopping = threading.Event()

        def stop(*_):
            if not stopping.is_set():
                stopping.set()
                self.conn.add_callback_threadsafe(self.ch.stop_consuming)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.ch.basic_consume(self.names["jobs_queue"], self.on_message)
        log.info("consuming %s with %d threads", self.names["jobs_queue"], self.concurrency)
        # Returns after stop_consuming, which also cancels the consumer.
        self.ch.start_consuming()
        # Drain: no new deliveries; let the held jobs publish and ack.
        deadline = time.monotonic() + 30
        while True:
            with self.lock:
                if self.in_flight <= 0:
                    break
            if time.monotonic() > deadline:
                break
            self.conn.process_data_events(time_limit=0.1)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.conn.close()


def self_check():
    assert parse_s3_uri("s3://b/k/x.png") == ("b", "k/x.png")
    for bad in ("http://b/k", "s3://b", "s3:///k", None):
        try:
            parse_s3_uri(bad)
        except ValueError:
            pass
        else:
            raise AssertionError(bad)
    assert sniff(b"\x89PNG\r\n\x1a\nxx") == "image/png"
    assert sniff(b"\xff\xd8\xff\xe0") == "image/jpeg"
    assert sniff(b"GIF89a") is None
    assert [band(s) for s in (100, 61, 60, 31, 30, 0)] == [
        "live", "live", "review", "review", "spoof", "spoof"]
    v, s, sig, _ = normalize({"result": {"screenReplay": {"liveness_score": 95},
                                         "paperPrinted": {"liveness_score": 45}}})
    assert v == "review" and s == 0.45 and sig[2]["verdict"] == "not_performed", (v, s, sig)
    assert normalize({"result": {}})[0] == "inconclusive"
    assert names("p")["jobs_queue"] == "p.liveness.jobs" and names("")["dead_queue"] == "liveness.dead"
    print("python_worker self-check: ok")


def main():
    if "--self-check" in sys.argv:
        self_check()
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    logging.getLogger("botocore").setLevel(logging.WARNING)
    Worker(os.environ).run()


if __name__ == "__main__":
    main()
