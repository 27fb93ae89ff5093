#!/usr/bin/env bash
# Build a stand-in for the official `python:3.11-slim-bookworm` image from Debian packages alone.
#
# Only for machines that cannot pull from Docker Hub (see docs/docker.md, "Machines without Docker
# Hub access"). Everyone else gets the official image from `docker build` and never runs this.
#
# It debootstraps a minimal Debian bookworm (minbase) with Debian's python3.11 + venv support and
# ca-certificates, makes `python`, `python3` and `python3.11` resolve from /usr/local/bin like the
# official image, trims docs/caches the way the slim images do, and imports the tree under the tag
# the Dockerfile's FROM uses, so the Dockerfile stays the standard one.
#
# Usage: scripts/docker-base-image.sh [--force]
#   IMAGE=python:3.11-slim-bookworm   tag to create (must match the Dockerfile's PYTHON_IMAGE)
#   DEBIAN_MIRROR=http://...          default: the first `URIs:`/`deb` mirror apt uses on this host
#   DEBIAN_SUITE=bookworm
#   DOCKER=docker                     docker client to use
# Needs root, debootstrap (apt-get install debootstrap) and a running Docker engine.
set -euo pipefail

IMAGE="${IMAGE:-python:3.11-slim-bookworm}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
DOCKER="${DOCKER:-docker}"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die() { echo "docker-base-image: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap + chroot)"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install -y debootstrap"
"$DOCKER" info >/dev/null 2>&1 || die "no Docker engine reachable with '$DOCKER'"

if [[ $FORCE -eq 0 ]] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "docker-base-image: $IMAGE already exists (use --force to rebuild)"
    exit 0
fi

# The Debian mirror apt already uses here (deb822 .sources first, then one-line .list files).
if [[ -z "${DEBIAN_MIRROR:-}" ]]; then
    DEBIAN_MIRROR=$(
        { grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
          grep -h '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '{print $2}'; } \
        | grep -v -- '-security' | grep '/debian/\?$' | head -n1
    ) || true
    DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
fi
SECURITY_MIRROR="${SECURITY_MIRROR:-${DEBIAN_MIRROR%/debian}/debian-security}"
echo "docker-base-image: mirror $DEBIAN_MIRROR, suite $DEBIAN_SUITE -> $IMAGE"

WORK=$(mktemp -d /tmp/docker-base-image.XXXXXX)
ROOTFS="$WORK/rootfs"
cleanup() {
    # debootstrap/chroot may leave /proc mounted inside the tree; never rm -rf through a mount.
    for m in "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev/pts"; do
        if mountpoint -q "$m" 2>/dev/null; then umount -l "$m" || true; fi
    done
    rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

# python3-distutils is named because debootstrap does not resolve the virtual package
# python3.11-distutils that python3.11-venv depends on.
debootstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
    "$DEBIAN_SUITE" "$ROOTFS" "$DEBIAN_MIRROR"

cat > "$ROOTFS/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $DEBIAN_MIRROR
Suites: $DEBIAN_SUITE $DEBIAN_SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $DEBIAN_SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
rm -f "$ROOTFS/etc/apt/sources.list"

# Security and point updates, like the official images (which are rebuilt on every Debian update).
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    sh -c 'apt-get update -qq && apt-get -y -qq upgrade && apt-get clean'
umount "$ROOTFS/proc"

# `python`, `python3`, `python3.11` on PATH from /usr/local/bin, as in the official image.
for name in python python3 python3.11; do
    ln -sf /usr/bin/python3.11 "$ROOTFS/usr/local/bin/$name"
done

# Trim what the docker debian:*-slim images drop: apt lists/caches, docs, man pages, locales.
# The standard library's bytecode (__pycache__, made by Debian's py3compile) stays: with a
# read-only root filesystem Python could not cache it, and every start would recompile it.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/cache/debconf/*-old "$ROOTFS"/var/log/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/usr/share/locale/* "$ROOTFS"/usr/share/lintian/*
: > "$ROOTFS/etc/machine-id"
echo "localhost" > "$ROOTFS/etc/hostname"

tar --numeric-owner --xattrs -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap $DEBIAN_SUITE minbase + python3.11 (stand-in for the official image)" \
    - "$IMAGE"

"$DOCKER" run --rm --network=none "$IMAGE" sh -c \
    'python --version && python3 -c "import venv, ensurepip, ssl, sqlite3; print(\"python ok:\", ssl.OPENSSL_VERSION)"'
"$DOCKER" image ls "$IMAGE"
