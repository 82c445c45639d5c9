#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/
(docs/fuzzing.md): small real examples from docs/messages.md, the vendor
pages and the adapters' tests, framed the way each target reads its input.
Run it again after changing a target's framing; the grown corpus is never
committed."""

import base64
import hashlib
import json
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, items):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for item in items:
        data = item if isinstance(item, bytes) else item.encode()
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def j(v):
    return json.dumps(v, separators=(",", ":"))


# job: delivery bodies, valid and not.
write("job", [
    j({"schema": "liveness.job.v1", "job_id": "kyc-2026-000123:front", "check": "document",
       "image": "s3://liveness-images/applicants/123/front.jpg",
       "back_image": "s3://liveness-images/applicants/123/back.jpg", "provider": "argos",
       "signals": ["screen_replay", "printed_copy"], "metadata": {"applicant": "123"}}),
    j({"schema": "liveness.job.v1", "job_id": "a-1", "check": "face", "image": "s3://imgs/selfie.png"}),
    '{"schema":"liveness.job.v1","job_id":"a","check":"document","image":"s3://imgs/x",'
    '"back_image":null,"provider":null,"signals":null,"metadata":{ "n": 1.50, "big": 123456789012345678901234567890, "s": "a b\\"c" }}',
    j({"schema": "v2", "job_id": "bad id!", "check": "selfie", "image": "http://x/y", "signals": [],
       "provider": "acme"}),
    j({"schema": "liveness.job.v1", "job_id": "a", "check": "document", "image": "s3://imgs/x",
       "signals": ["printed_copy", "printed_copy", "face_liveness"]}),
    '[1,2]',
    '{"job_id":"x","job_id":"y"}',
])

# s3_uri: URIs and prefixes.
write("s3_uri", [
    "s3://liveness-images/applicants/123/front.jpg", "s3://ok.bucket/a b/c%20", "s3://Bad_Bucket/k",
    "s3://ok-bucket/", "s3://ok-bucket", "s3://b/", "s3:///key", "s3://a..b/\u00e9/\u2028",
])

# headers: arbitrary-derived input; any bytes make one, a few lengths help.
write("headers", [bytes(range(64)), b"\x03x-liveness-attempts\x00\x07" * 4, b"\xff" * 128])

# token: arbitrary-derived input.
write("token", [b"0123456789abcdef0123456789abcdef\x00job-1\x02\x00\x00\x00" + bytes(64),
                bytes(range(200))])

# scenario: images carrying scenarios, and scenario texts.
def png(text):
    out = b"\x89PNG\r\n\x1a\n"
    for kind, data in [(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)),
                       (b"tEXt", b"liveness-scenario\x00" + text.encode()), (b"IEND", b"")]:
        out += struct.pack(">I", len(data)) + kind + data + b"\0\0\0\0"
    return out


def jpeg(text):
    data = b"liveness-scenario=" + text.encode()
    return b"\xff\xd8\xff\xfe" + struct.pack(">H", len(data) + 2) + data + b"\xff\xda\x00\x02\xff\xd9"


scenarios = [j({"screen_replay": 12.5, "printed_copy": 80, "portrait_substitution": 95}),
             j({"face": 95, "warnings": ["LOW_FACE_QUALITY", "LIVENESS_FACE_ATTACK:warning"],
                "didit_status": "In Review", "didit_method": "ACTIVE_3D"}),
             j({"error": 1009, "error_times": 2, "latency_ms": 10, "not_performed": ["printed_copy"]}),
             j({"no_face": True}), '{"unknown_key":1}']
write("scenario", [png(s) for s in scenarios[:3]] + [jpeg(s) for s in scenarios[2:]] + scenarios)


# Vendor targets: a few header bytes, then the body.
def framed(head, body):
    return bytes(head) + (body if isinstance(body, bytes) else body.encode())


argos_doc = j({"apiType": "id_live_doc", "transactionId": "txn_123456789",
               "engineVersion": "id_liveness@3.4.2",
               "result": {"screenReplay": {"liveness_score": 99}, "paperPrinted": {"liveness_score": 30.5},
                          "replacePortraits": {"liveness_score": 60}}})
argos_cb_err = j({"statusCode": 400, "apiType": "id_live_doc", "transactionId": "t",
                  "errorCode": 1009, "message": "could not analyse"})
argos_err = j({"error": {"statusCode": 400, "apiType": "id_live_doc", "transactionId": "t",
                         "errorCode": "1003", "message": "Failed to process"}})
write("argos_document", [
    framed([0b11100, 0, 200, 0, 0], argos_doc),
    framed([0b00100, 0, 200, 60, 120], argos_doc),
    framed([2 | 0b11100, 0, 200, 0, 0], j({**json.loads(argos_doc), "statusCode": 200})),
    framed([2, 0, 0, 0, 0], argos_cb_err),
    framed([3, 1, 144, 0, 0], argos_err),
    framed([3, 1, 145, 0, 0], j({"statusCode": 401, "errorCode": 1001, "message": "bad key"})),
    framed([3, 1, 244, 0, 0], "<html>bad gateway</html>"),
])
write("argos_face", [
    framed([0, 0, 200, 0, 0], j({"apiType": "face_liveness", "result": {"liveness_score": 87.25},
                                 "transactionId": "t-9"})),
    framed([0, 0, 200, 0, 0], j({"result": {"liveness_score": 150}})),
    framed([1, 1, 144, 0, 0], j({"transactionId": "t", "errorCode": 1017, "message": "no face"})),
    framed([1, 1, 173, 0, 0], j({"transactionId": "t", "message": "Too many requests"})),
])

def didit_w(risk, level):
    return {"risk": risk, "additional_data": None, "log_type": level,
            "short_description": "short " + risk, "long_description": "long"}

write("didit", [
    framed([0, 255, 0, 200], j({"request_id": "req-1", "liveness": {
        "status": "Approved", "method": "PASSIVE", "score": 95,
        "user_image": {"entities": [{"bbox": [10, 20, 110, 140], "confidence": 0.98}], "best_angle": 0},
        "warnings": [], "face_quality": 82.1, "face_luminance": 55},
        "vendor_data": "applicant-7", "created_at": "2026-11-23T10:00:00.000Z"})),
    framed([0, 75, 0, 200], j({"liveness": {"status": "Declined", "method": "ACTIVE_3D", "score": 12.5,
                                            "warnings": [didit_w("LOW_LIVENESS_SCORE", "error"),
                                                         didit_w("LIVENESS_FACE_ATTACK", "warning")]}})),
    framed([0, 255, 0, 200], j({"liveness": {"status": "Not Finished", "score": None,
                                             "warnings": [didit_w("NO_FACE_DETECTED", "error")]}})),
    framed([0, 255, 0, 200], j({"liveness": {"status": "In Review", "score": 89.92,
                                             "warnings": [didit_w("FACE_IN_BLOCKLIST", "warning")]}})),
    framed([1, 0, 1, 147], j({"detail": "You do not have enough credits"})),
    framed([1, 0, 1, 144], j({"user_image": ["This field is required."]})),
    framed([1, 0, 1, 173], j({"detail": {"face_liveness_score_decline_threshold": ["too big"]}})),
])

def check(p, live, t=0.5):
    return {"threshold": t, "live": live, "probability": p}

def side(a, b, c):
    return {"screenReplay": a, "printedCopy": b, "portraitSubstitution": c, "live": 1}

ic_obj = {"success": True, "result": True, "message": "success",
          "imageQualityFindings": [{"code": "301", "message": "back sent as front"}, {"code": 400}],
          "data": {"front": side(check(0.93, 1), check(0.12, "0"), check(None, 2)),
                   "back": side(check(0.8, None), check(0.5, 1, 0.8), check(0.99, 1))}}

def envelope(private):
    return base64.b64encode(j({"public_data": {}, "private_data": private}).encode())

write("intellicheck", [
    framed([0 | 0b111000 | 4, 0, 200], j(ic_obj)),
    framed([0, 0, 200], j({"success": False, "message": "could not process"})),
    framed([1 | 4, 0, 200], envelope({"transaction_id": "t-1", "documentLivenessIdRnD": ic_obj})),
    framed([1, 0, 200], envelope({"transaction_id": "t-1", "document_liveness": None, "success": True})),
    framed([1, 0, 200], envelope({"transaction_id": "t-1", "signals": ["face_match"]})),
    framed([2, 1, 144], j({"detail": [{"loc": ["body", "private_data"], "msg": "field required",
                                       "input": "QUJD" * 30}]})),
    framed([3, 1, 145], envelope({"message": "bad signature\u0007"})),
    framed([2, 1, 244], "upstream says no " + "A" * 64),
])
