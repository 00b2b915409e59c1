#!/usr/bin/env bash
# Debian's headless Chromium, used only by the test that renders the evaluation report.
# Idempotent; needs root (CI runs as root) or passwordless sudo.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
sudo_cmd=""
if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo -n"; fi
export DEBIAN_FRONTEND=noninteractive
$sudo_cmd apt-get install -y -q chromium >/dev/null 2>&1 || {
  $sudo_cmd apt-get update -q >/dev/null && $sudo_cmd apt-get install -y -q chromium >/dev/null; }
/usr/bin/chromium --version
