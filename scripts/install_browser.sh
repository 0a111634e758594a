#!/usr/bin/env bash
# Debian's Chromium and its driver, for the console's browser test (tests/integration/test_console_browser.py).
# Installs them only when /usr/bin/chromium or /usr/bin/chromedriver is missing; uses sudo when not root.
# Playwright drives /usr/bin/chromium directly: `playwright install` (which downloads its own builds) is never run.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: /usr/bin/chromium or /usr/bin/chromedriver is missing and there is no apt-get;" \
         "install Chromium and its driver by hand (the browser test needs them)" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
echo "install_browser.sh: installing chromium and chromium-driver from Debian's packages" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null
test -x /usr/bin/chromium && test -x /usr/bin/chromedriver
