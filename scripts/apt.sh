# Sourced (not run) by the test installers: `apt_install PKG...` installs
# Debian packages as root, or through sudo when not root and sudo exists.
# The package lists are refreshed once per run of install-test-deps.sh: it
# exports MLES_APT_STAMP, a file that the first update writes to, and the
# installers it runs (separate processes) find it there.

apt_install() {
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if ! command -v sudo >/dev/null 2>&1; then
            echo "installing $*: needs root (or sudo)" >&2
            return 1
        fi
        sudo="sudo"
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "installing $*: no apt-get here (the installers target Debian 12); install them by hand" >&2
        return 1
    fi
    # Another apt may be running (CI images, parallel set-up): wait for its lock.
    if [ -z "${MLES_APT_STAMP:-}" ] || [ ! -s "$MLES_APT_STAMP" ]; then
        $sudo apt-get -o DPkg::Lock::Timeout=300 update -qq
        if [ -n "${MLES_APT_STAMP:-}" ]; then
            echo updated >"$MLES_APT_STAMP"
        fi
    fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 \
        install -y -qq --no-install-recommends "$@" >/dev/null
}
