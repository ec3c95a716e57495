#!/usr/bin/env bash
# Installs what tests/web_client.rs needs, skipping what is present (safe to
# rerun): Debian's chromium, Node.js with npm, and playwright-core in
# tests/browser/node_modules from the lock file (never a downloaded browser:
# the test drives /usr/bin/chromium). playwright-core is pinned to 1.61.1,
# the newest release that still runs on Debian 12's Node.js 18 (1.62 needs
# 20); it runs on newer Node.js too.
set -euo pipefail
cd "$(dirname "$0")"
source ../../scripts/apt.sh

missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt_install "${missing[@]}"
fi

want=$(node -p 'require("./package.json").dependencies["playwright-core"]')
have=$(node -p 'try { require("./node_modules/playwright-core/package.json").version } catch { "" }')
if [ "$have" != "$want" ]; then
    echo "installing playwright-core $want (tests/browser)"
    npm ci --no-audit --no-fund --loglevel=error
fi
