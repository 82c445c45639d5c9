"""The worker's message contracts: the JSON Schemas committed in schemas/, the
exchange names and the AMQP settings shared by producer.py and consumer.py."""

import json
import os
from pathlib import Path

from jsonschema import Draft202012Validator, FormatChecker

DEFAULT_SCHEMAS = Path(__file__).resolve().parent.parent.parent / "schemas"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"

# Number formats the Rust schema generator writes; checked, not just ignored.
formats = FormatChecker()


def _unsigned(bits):
    def ok(v):
        return not isinstance(v, int) or isinstance(v, bool) or 0 <= v < 2**bits

    return ok


for _name, _bits in [("uint16", 16), ("uint32", 32), ("uint64", 64)]:
    formats.checks(_name)(_unsigned(_bits))
formats.checks("double")(lambda v: not isinstance(v, float) or v == v and abs(v) != float("inf"))


def validator(name, schemas_dir=None):
    """A validator for schemas/<name>.v1.schema.json (job, result, dead_letter)."""
    path = Path(schemas_dir or os.environ.get("LIVENESS_SCHEMAS", DEFAULT_SCHEMAS)) / f"{name}.v1.schema.json"
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=formats)


def problems(v, message):
    """Every violation of the schema, one line each; empty when the message is valid."""
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in sorted(v.iter_errors(message), key=lambda e: list(e.absolute_path))
    ]


def names(prefix):
    """Exchange names under the worker's broker.prefix ("" for none)."""
    p = f"{prefix}." if prefix else ""
    return {
        "jobs": f"{p}liveness.jobs",
        "results": f"{p}liveness.results",
        "dead": f"{p}liveness.dead",
    }


def common_args(parser):
    parser.add_argument("--amqp-url", default=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
                        help="RabbitMQ URL (env AMQP_URL); amqps:// for TLS")
    parser.add_argument("--prefix", default=os.environ.get("LIVENESS_BROKER__PREFIX", ""),
                        help="the worker's broker.prefix (env LIVENESS_BROKER__PREFIX)")
    parser.add_argument("--schemas", default=None, help=f"directory of the JSON Schemas (default {DEFAULT_SCHEMAS})")
