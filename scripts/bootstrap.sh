#!/bin/sh
# Sets up a fresh Debian machine for cloudbroker: system packages, then the venv in .venv.
#   scripts/bootstrap.sh run    what `make run` needs (libvirt for the local host)
#   scripts/bootstrap.sh test   plus PostgreSQL and everything the tests start
set -eu
cd "$(dirname "$0")/.."
what="${1:-run}"

PKGS_RUN="python3 python3-venv python3-dev gcc pkg-config libvirt-dev libvirt-clients
libvirt-daemon libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils cpio busybox-static
iproute2 openssh-server openssh-client xz-utils"
PKGS_TEST="$PKGS_RUN postgresql libxml2-utils chromium"
if [ "$what" = test ]; then pkgs="$PKGS_TEST"; else pkgs="$PKGS_RUN"; fi

missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "bootstrap: installing Debian packages:$missing"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.cloudbroker-$what
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
    .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
    if [ "$what" = test ]; then
        .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
    else
        .venv/bin/pip install -q --disable-pip-version-check -e '.[libvirt]'
    fi
    touch "$stamp"
fi
