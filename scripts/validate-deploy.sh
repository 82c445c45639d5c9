#!/usr/bin/env bash
# Validates the deployment files offline: scripts/validate_deploy.py (Dockerfile,
# compose, Kubernetes objects against the Kubernetes and CRD schemas, alert rules
# against the manifests and the metrics), then `promtool check rules` and
# `promtool test rules` on deploy/prometheus/. Installs what is missing: a venv with
# the pinned packages of scripts/validate-deploy-requirements.txt under
# ~/.cache/liveness-worker, and promtool from Debian's prometheus package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

venv="${LIVENESS_VENV:-$HOME/.cache/liveness-worker/venv}"
reqs=scripts/validate-deploy-requirements.txt
stamp="$venv/.requirements-$(sha256sum "$reqs" | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs"
  touch "$stamp"
fi
"$venv/bin/python" scripts/validate_deploy.py

if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)" >&2
  # The package would start a Prometheus server (on :9090, the worker's metrics
  # port) where services may start; forbid that for the install, as Debian's
  # policy-rc.d mechanism allows, unless a policy is already in place.
  policy=/usr/sbin/policy-rc.d
  own_policy=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  status=0
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus; } >&2 || status=$?
  [[ -n $own_policy ]] && rm -f "$policy"
  ((status == 0)) || { echo "cannot install prometheus (promtool) with apt-get" >&2; exit "$status"; }
fi
promtool check rules deploy/prometheus/liveness-worker.rules.yml
promtool test rules deploy/prometheus/tests.yml
