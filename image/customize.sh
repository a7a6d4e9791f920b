#!/bin/sh
# mmdebstrap's customize hook: the box's own part of the root filesystem.
#   customize.sh ROOT STAGE PIPCACHE
# ROOT: the new root; STAGE: the agent's wheel, requirements.txt, the units and the rootfs overlay;
# PIPCACHE: pip's download cache, kept between builds.
set -eu
root=$1 stage=$2 pipcache=$3
# Every command in the root with a clean environment (the building machine's PYTHONDONTWRITEBYTECODE
# changed the root's bytecode), and with the build's SOURCE_DATE_EPOCH: systemd-sysusers dates the
# agent's user's password entry by it.
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:?the build sets it}" "$@"
}

cp -a "$stage/rootfs/." "$root/"

# The agent in its own virtualenv, at the path the unit runs. pip reaches the package index the
# way this machine does (its pip configuration and certificate authorities), only while building.
borrowed=""
for path in /etc/pip.conf /etc/xdg/pip; do
    if [ -e "$path" ] && [ ! -e "$root$path" ]; then
        mkdir -p "$(dirname "$root$path")"
        cp -a "$path" "$root$path"
        borrowed="$borrowed $path"
    fi
done
# systemd-resolved made /etc/resolv.conf its stub's, which answers nothing in a chroot.
rm -f "$root/etc/resolv.conf" && cp /etc/resolv.conf "$root/etc/resolv.conf"
mkdir -p "$root/opt/counterbox" "$root/tmp/stage" "$root/tmp/pip-cache"
mount --bind "$stage" "$root/tmp/stage"
mount --bind "$pipcache" "$root/tmp/pip-cache"
trap 'umount "$root/tmp/stage" "$root/tmp/pip-cache" 2>/dev/null || true' EXIT
wheel=$(basename "$stage"/wheel/counterbox-*.whl)
in_root python3 -m venv /opt/counterbox/.venv
cp /etc/ssl/certs/ca-certificates.crt "$stage/ca.crt" 2>/dev/null || cp "$root/etc/ssl/certs/ca-certificates.crt" "$stage/ca.crt"
# The same build twice makes the same files: extensions compiled without debug information (which
# names pip's random build directory, and the build id hashes it), and compiled at every build, never
# taken from wheels an earlier build left in pip's cache (its downloads are kept).
rm -rf "$pipcache/wheels"
in_root env PIP_CACHE_DIR=/tmp/pip-cache PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CERT=/tmp/stage/ca.crt REQUESTS_CA_BUNDLE=/tmp/stage/ca.crt SSL_CERT_FILE=/tmp/stage/ca.crt \
    CFLAGS=-g0 \
    /opt/counterbox/.venv/bin/pip install -q \
    -c /tmp/stage/requirements.txt "/tmp/stage/wheel/$wheel"
rm -rf "$pipcache/wheels"
umount "$root/tmp/stage" "$root/tmp/pip-cache"
trap - EXIT
rmdir "$root/tmp/stage" "$root/tmp/pip-cache"
for path in $borrowed; do rm -rf "$root$path"; done
cp "$stage/README.md" "$root/opt/counterbox/"
mkdir -p "$root/opt/counterbox/docs" && cp "$stage/configuration.md" "$root/opt/counterbox/docs/"

# What only building needed: compilers and headers (evdev, systemd-python and xkbcommon build from source).
in_root env DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq --autoremove $(cat "$stage/build-only-packages") >/dev/null
find "$root/opt/counterbox/.venv" -name __pycache__ -prune -exec rm -rf {} +
# Compiled once here: a read-only root cannot take the bytecode the first run would write. In one
# process, files in order, string hashing fixed: marshal's bytes depend on the order of a frozenset's
# members (the hash seed) and on what the compiling process interned before (which file went to which
# worker), so a parallel compile makes other bytecode from one build to the next. No bytecode written
# on import: the interpreter's own start imports setuptools' _distutils_hack (a .pth file) and would
# write its .pyc first, stamped with the source's install time, which compileall would take as up to
# date; forced (-f), so that no file compiled before this step is ever kept.
in_root env PYTHONHASHSEED=0 PYTHONDONTWRITEBYTECODE=1 /opt/counterbox/.venv/bin/python -m compileall -q -f -j 1 \
    --invalidation-mode unchecked-hash /opt/counterbox/.venv >/dev/null

# The units and their user, group and udev rules, as systemd/ ships them.
install -m 0644 "$stage/systemd/counterbox-agent.service" "$stage/systemd/counterbox-data-key.service" "$root/usr/lib/systemd/system/"
install -m 0644 "$stage/systemd/counterbox.sysusers" "$root/usr/lib/sysusers.d/counterbox.conf"
install -m 0644 "$stage/systemd/70-counterbox.rules" "$root/usr/lib/udev/rules.d/70-counterbox.rules"
# The user exists before the first boot: a read-only /etc cannot take it then.
in_root systemd-sysusers
mkdir -p "$root/etc/counterbox"
in_root systemctl enable -q counterbox-agent.service systemd-networkd.service systemd-resolved.service
# No login anywhere: a box has no screen, and a keyboard the agent has not grabbed yet (one it is
# only watching) must never type into a login prompt. Nor logind, which would start one on a VT switch.
in_root systemctl mask -q getty@.service serial-getty@.service autovt@.service console-getty.service \
    getty-static.service getty.target systemd-logind.service
# Nothing to update in place on a read-only root: a box is updated by a new image.
in_root systemctl mask -q apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer

# The resolver is systemd-resolved's. (The root's /etc/machine-id stays empty: each box keeps its
# own on its data partition, laid over it by the initramfs.)
rm -f "$root/var/lib/dbus/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
# The root's /var is hidden at run time by the one in memory and the data partition; ship it empty.
rm -rf "$root/var/cache/"* "$root/var/log/"*
