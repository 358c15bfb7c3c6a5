#!/usr/bin/env bash
# Install Chromium from Debian's packages for the test that renders report/index.html in a headless
# browser (tests/test_verdict.py). Idempotent; as root or with password-less sudo. Users need no
# browser to run the workflow: only CI, which sets FRAGILITY_REQUIRE_BROWSER=1, requires it.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=
if [ "$(id -u)" != 0 ]; then SUDO="sudo -n"; fi   # -n: fail instead of prompting (no hang)
command -v apt-get >/dev/null || { echo "install_chromium.sh: apt-get is missing (Debian/Ubuntu only)" >&2; exit 1; }
$SUDO timeout 300 apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null
