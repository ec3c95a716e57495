#!/usr/bin/env bash
# Installs what tests/web_client.rs needs, skipping what is present (safe to
# rerun): Debian's chromium and chromium-driver, Node.js with npm, and
# playwright-core in tests/browser/node_modules (never a downloaded browser:
# the test drives /usr/bin/chromium).
set -euo pipefail
cd "$(dirname "$0")"

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# playwright-core is a plain npm package; it downloads no browser by itself.
if [ ! -f node_modules/playwright-core/package.json ]; then
    echo "installing playwright-core (tests/browser)"
    npm ci --no-audit --no-fund --loglevel=error
fi
