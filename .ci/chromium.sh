#!/usr/bin/env bash
# Install headless Chromium and its WebDriver (Debian's packages) for the MLflow UI
# test (tests/test_mlflow_ui.py), when missing. Usage: bash .ci/chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq chromium chromium-driver >&2
chromium --version >&2
