#!/usr/bin/env bash
# Installs Autobahn|Testsuite (wstest) for tests/autobahn.rs, unless present.
# It runs on Python 2.7 only: the machines have 2.7.18 under pyenv, and the
# package goes into a folder of its own (pip --target), which the test puts
# on the path with site.addsitedir. Prints nothing when already installed.
set -euo pipefail

VERSION=25.10.1
dir="${MLES_AUTOBAHN_DIR:-$HOME/.cache/mles/autobahn-$VERSION}"
python="${MLES_PYTHON2:-${PYENV_ROOT:-$HOME/.pyenv}/versions/2.7.18/bin/python}"

if [ ! -x "$python" ]; then
    echo "install-autobahn: no Python 2.7.18 at $python (set MLES_PYTHON2)" >&2
    exit 1
fi
if [ -f "$dir/.installed" ]; then
    exit 0
fi
echo "installing autobahntestsuite $VERSION into $dir"
rm -rf "$dir"
mkdir -p "$dir"
"$python" -m pip install -q --disable-pip-version-check --no-warn-script-location \
    --target "$dir" "autobahntestsuite==$VERSION" 2>&1 | grep -v DEPRECATION || true
# Check it imports before calling it installed.
"$python" -c "import site; site.addsitedir('$dir'); import autobahntestsuite.wstest"
touch "$dir/.installed"
