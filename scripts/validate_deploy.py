#!/usr/bin/env python3
"""Offline checks of what cannot run here (no Docker engine, no cluster):
the Dockerfile, docker-compose.yml, the Kubernetes manifests and the Grafana
dashboard, and the AsyncAPI document. Kubernetes objects are validated against the Kubernetes schemas by
kubernetes-validate; KEDA's CRDs and the rest are checked for the properties
this project relies on. Exits non-zero naming every problem."""

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
problems = []


def check(ok, msg):
    if not ok:
        problems.append(msg)


def duration_secs(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", s)
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


default_toml = (ROOT / "config/default.toml").read_text()
drain = duration_secs(re.search(r'^drain_timeout = "([^"]+)"', default_toml, re.M).group(1))
metric_names = set(re.findall(r'registry\.register\(\s*"([a-z0-9_]+)"', (ROOT / "src/telemetry.rs").read_text(), re.S))

# Dockerfile: multi-stage, non-root.
docker = (ROOT / "Dockerfile").read_text()
check(len(re.findall(r"^FROM ", docker, re.M)) >= 2, "Dockerfile: not multi-stage")
users = re.findall(r"^USER (\S+)", docker, re.M)
check(users and not users[-1].startswith(("0", "root")), "Dockerfile: the final stage must run as a non-root USER")
check("HEALTHCHECK" in docker, "Dockerfile: no HEALTHCHECK")

# docker-compose.yml: the services, ports, health checks and replicas it promises.
compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
services = compose.get("services", {})
for name in ["rabbitmq", "minio", "minio-init", "emulator", "worker"]:
    check(name in services, f"compose: service {name} missing")
if not problems:
    check("15672:15672" in services["rabbitmq"].get("ports", []), "compose: RabbitMQ management UI port not published")
    check("management" in services["rabbitmq"]["image"], "compose: RabbitMQ image without the management plugin")
    for name in ["rabbitmq", "minio", "emulator", "worker"]:
        check("healthcheck" in services[name], f"compose: {name} has no healthcheck")
    w = services["worker"]
    check(w.get("deploy", {}).get("replicas") == 3, "compose: worker must run three replicas")
    check(duration_secs(w.get("stop_grace_period", "0s")) > drain, "compose: worker stop_grace_period must exceed drain_timeout")
    check(w["depends_on"]["minio-init"]["condition"] == "service_completed_successfully", "compose: worker must wait for the buckets")
    init = " ".join(services["minio-init"]["entrypoint"])
    for b in ["liveness-images", "liveness-results"]:
        check(b in init, f"compose: bucket {b} not created")

# AsyncAPI: the document names the default exchanges and queues, and every
# payload it references is one of the generated schemas.
asyncapi = yaml.safe_load((ROOT / "schemas/asyncapi.yaml").read_text())
check(str(asyncapi.get("asyncapi", "")).startswith("3."), "asyncapi.yaml: not an AsyncAPI 3 document")
addresses = {c.get("address") for c in asyncapi.get("channels", {}).values()}
for key in ["jobs_exchange", "results_exchange", "dead_exchange", "poison_queue"]:
    name = re.search(rf'^{key} = "([^"]+)"', default_toml, re.M).group(1)
    check(name in addresses, f"asyncapi.yaml: no channel for {key} ({name})")
refs = re.findall(r"\$ref: '\./([^']+)'", (ROOT / "schemas/asyncapi.yaml").read_text())
check(len(refs) == 3, "asyncapi.yaml: expected the three message payload schemas")
for ref in refs:
    check((ROOT / "schemas" / ref).is_file(), f"asyncapi.yaml: payload {ref} does not exist")
for op in asyncapi.get("operations", {}).values():
    target = op["channel"]["$ref"].split("/")[-1]
    check(target in asyncapi["channels"], f"asyncapi.yaml: operation on unknown channel {target}")

# Kubernetes: schema validation of the core objects, then our own properties.
docs = []
for f in sorted((ROOT / "deploy/k8s").glob("*.yaml")):
    for d in yaml.safe_load_all(f.read_text()):
        if d:
            docs.append((f, d))
core = [str(f) for f in sorted({f for f, d in docs if not d["apiVersion"].startswith("keda.sh/")})]
r = subprocess.run(["kubernetes-validate", "--strict", "-k", "1.30.0", *core], capture_output=True, text=True)
check(r.returncode == 0, f"kubernetes-validate failed:\n{r.stdout}{r.stderr}")
kinds = {d["kind"]: d for _, d in docs}
for kind in ["Deployment", "PodDisruptionBudget", "ConfigMap", "Secret", "ScaledObject", "TriggerAuthentication", "Service"]:
    check(kind in kinds, f"k8s: no {kind}")
if "Deployment" in kinds:
    spec = kinds["Deployment"]["spec"]["template"]["spec"]
    c = spec["containers"][0]
    check("livenessProbe" in c and c["livenessProbe"]["httpGet"]["path"] == "/livez", "k8s: liveness probe must GET /livez")
    check("readinessProbe" in c and c["readinessProbe"]["httpGet"]["path"] == "/readyz", "k8s: readiness probe must GET /readyz")
    check(spec.get("terminationGracePeriodSeconds", 30) > drain, "k8s: terminationGracePeriodSeconds must exceed drain_timeout")
    check(spec.get("securityContext", {}).get("runAsNonRoot") is True, "k8s: pod must run as non-root")
    env = {e["name"]: e for e in c.get("env", [])}
    for var in ["LIVENESS_BROKER__URL", "LIVENESS_PROVIDERS__ARGOS__API_KEY"]:
        check("secretKeyRef" in env.get(var, {}).get("valueFrom", {}), f"k8s: {var} must come from a Secret")
    check(any(v.get("configMap") for v in spec.get("volumes", [])), "k8s: configuration must come from a ConfigMap")
if "ScaledObject" in kinds:
    so = kinds["ScaledObject"]["spec"]
    check(so["scaleTargetRef"]["name"] == kinds.get("Deployment", {}).get("metadata", {}).get("name"), "keda: must scale the worker Deployment")
    t = so["triggers"][0]
    check(t["type"] == "rabbitmq" and t["metadata"]["queueName"] == "liveness.jobs", "keda: must scale on the liveness.jobs queue")
    check(t["metadata"]["mode"] in ("QueueLength", "MessageRate") and t["metadata"]["value"].isdigit(), "keda: bad trigger mode/value")
    check(t.get("authenticationRef", {}).get("name") == kinds["TriggerAuthentication"]["metadata"]["name"], "keda: authenticationRef mismatch")
if "ConfigMap" in kinds:
    cfg = kinds["ConfigMap"]["data"]["config.toml"]
    check("drain_timeout" in cfg, "k8s: ConfigMap should state drain_timeout next to the grace period")

# Grafana: valid JSON, and every metric it queries exists in the code.
dash = json.loads((ROOT / "deploy/grafana/liveness-worker.json").read_text())
exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
check(len(exprs) >= 8, "grafana: too few panels")
for e in exprs:
    for m in re.findall(r"\b(liveness_[a-z0-9_]+)", e):
        base = re.sub(r"_(total|bucket|count|sum)$", "", m)
        check(base.removeprefix("liveness_") in metric_names, f"grafana: {m} is not a metric the worker exports")

if problems:
    print("deploy validation failed:\n- " + "\n- ".join(problems))
    sys.exit(1)
print(f"deploy validation: Dockerfile, docker-compose.yml ({len(services)} services), "
      f"{len(docs)} Kubernetes objects, Grafana dashboard ({len(exprs)} queries): ok")
