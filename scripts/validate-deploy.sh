#!/usr/bin/env bash
# Validates the deployment files offline (see scripts/validate_deploy.py).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${LIVENESS_VENV:-$HOME/.cache/liveness-worker/venv}"
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0 pyyaml
fi
PATH="$venv/bin:$PATH" "$venv/bin/python" scripts/validate_deploy.py
