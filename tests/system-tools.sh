#!/usr/bin/env bash
# Installs the system programs the test suite needs, when they are missing:
#   prometheus, promtool   Debian package `prometheus`   (tests/integration/prometheus.py)
#   chromium               Debian package `chromium`
#   redis-server           Debian package `redis-server` (tests/integration/test_rate_limit.py)
#   haproxy                Debian package `haproxy`      (tests/integration/test_two_instances.py)
#   curl                   Debian package `curl`         (tests/integration/test_readmes.py runs the READMEs' commands)
# `./run.sh test` calls this on every run: when everything is installed it prints nothing and costs
# a few `command -v` lookups. It installs with apt-get as root, or with sudo when that needs no
# password. When it cannot, it prints one line per missing tool saying how to install it and still
# exits 0: the tests that need the tool then skip locally, and fail under CI (env CI set).
#
# For testing this script: BACKWORKS_SYSTEM_TOOLS="tool:package ..." replaces the list below, and
# BACKWORKS_SYSTEM_TOOLS_DRY_RUN=1 prints the commands that would run instead of running them.
set -uo pipefail

TOOLS="${BACKWORKS_SYSTEM_TOOLS:-prometheus:prometheus promtool:prometheus chromium:chromium redis-server:redis-server haproxy:haproxy curl:curl}"

missing_tools=() missing_packages=()
for pair in $TOOLS; do
    tool="${pair%%:*}" package="${pair#*:}"
    if ! command -v "$tool" >/dev/null 2>&1; then
        missing_tools+=("$tool:$package")
        case " ${missing_packages[*]-} " in *" $package "*) ;; *) missing_packages+=("$package") ;; esac
    fi
done
[ "${#missing_tools[@]}" -eq 0 ] && exit 0

say() { echo "tests/system-tools.sh: $*" >&2; }

explain() {  # $1: why nothing was installed
    say "$1; the tests that need these tools will be skipped (and fail under CI):"
    for pair in "${missing_tools[@]}"; do
        say "  ${pair%%:*} is missing: install it with 'sudo apt-get install --no-install-recommends ${pair#*:}' (Debian/Ubuntu) or your system's package manager"
    done
    exit 0
}

command -v apt-get >/dev/null 2>&1 || explain "apt-get is not available"

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        explain "not root and no password-less sudo"
    fi
fi

run() {
    if [ -n "${BACKWORKS_SYSTEM_TOOLS_DRY_RUN:-}" ]; then
        echo "would run: $*" >&2
    else
        "$@"
    fi
}

# Packages with services (prometheus, redis-server) must not start them: invoke-rc.d and deb-systemd-invoke obey
# /usr/sbin/policy-rc.d, and exit status 101 means "action forbidden". Containers usually have one.
POLICY=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$POLICY" ]; then
    run "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY" && added_policy=1
    trap '[ -n "$added_policy" ] && run "${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

say "installing ${missing_packages[*]} (for: ${missing_tools[*]%%:*})"
export DEBIAN_FRONTEND=noninteractive
# Another apt-get (a parallel test run, bench/setup.sh) may hold dpkg's lock: wait for it, bounded.
LOCK_WAIT=(-o DPkg::Lock::Timeout=300)
run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${LOCK_WAIT[@]}" update -q || say "apt-get update failed; trying the install anyway"
if ! run "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${LOCK_WAIT[@]}" install -y -q --no-install-recommends "${missing_packages[@]}"; then
    explain "apt-get install failed (see above)"
fi

# In case a service was started or enabled anyway (no policy-rc.d honoured, real systemd): the
# suite starts its own Prometheus and redis-server, and nothing here was running before since it
# was not installed.
stop_service() {  # $1: the package, $2: its systemd unit and init.d script name
    case " ${missing_packages[*]} " in *" $1 "*) ;; *) return 0 ;; esac
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        run "${SUDO[@]}" systemctl disable --now "$2.service" >/dev/null 2>&1 || true
    elif [ -x "/etc/init.d/$2" ]; then
        run "${SUDO[@]}" "/etc/init.d/$2" stop >/dev/null 2>&1 || true
        command -v update-rc.d >/dev/null 2>&1 && { run "${SUDO[@]}" update-rc.d "$2" disable >/dev/null 2>&1 || true; }
    fi
}
stop_service prometheus prometheus
stop_service redis-server redis-server
stop_service haproxy haproxy

for pair in "${missing_tools[@]}"; do
    tool="${pair%%:*}"
    if command -v "$tool" >/dev/null 2>&1; then
        say "$tool installed: $(command -v "$tool")"
    elif [ -z "${BACKWORKS_SYSTEM_TOOLS_DRY_RUN:-}" ]; then
        say "$tool is still missing after installing ${pair#*:}; install it by hand (tests that need it will be skipped, and fail under CI)"
    fi
done
exit 0
