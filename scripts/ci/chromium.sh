#!/usr/bin/env bash
# Headless Chromium for the dashboard test (tests/fleet2/test_dashboard_browser.py), from Debian's
# packages; playwright drives it as /usr/bin/chromium and never downloads a browser of its own.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null || true)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends chromium
chromium --version || true
