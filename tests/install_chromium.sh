#!/usr/bin/env bash
# Installs headless Chromium and chromedriver for the report rendering test (tests/test_report.py).
# Does nothing when both are already on PATH. Needs root (apt-get); otherwise it says so and exits 0,
# and the test skips (or fails under CI=true, where a missing browser is an error).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    echo "install_chromium.sh: not root, cannot apt-get install chromium chromium-driver" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
