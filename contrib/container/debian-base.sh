#!/usr/bin/env bash
# Build a Debian bookworm base image for the Containerfile from Debian's own mirror, for
# machines that reach Debian but not Docker Hub (the test suite's machines are such):
#
#   contrib/container/debian-base.sh [IMAGE]        # default: localhost/bridge-base:bookworm
#   podman build --format docker --build-arg BASE_IMAGE=localhost/bridge-base:bookworm -t bridge .
#
# It holds what the Containerfile needs of a base: python3 (3.11 in bookworm) with venv
# and pip, and ca-certificates for TLS to the homeserver, Slack and the mail relay.
# Documentation, man pages and translations are left out, as in Debian's slim images.
# Needs root, mmdebstrap and podman (apt-get install mmdebstrap podman); about a minute.
set -euo pipefail

image=${1:-localhost/bridge-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

for tool in mmdebstrap podman; do
    command -v "$tool" >/dev/null || { echo "debian-base.sh: $tool is not installed" >&2; exit 1; }
done

tarball=$(mktemp --suffix=.tar)
trap 'rm -f "$tarball"' EXIT

echo "debian-base.sh: building $image from $mirror (bookworm, python3)"
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --aptopt='Acquire::Retries "3"' \
    bookworm "$tarball" "$mirror"
podman import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    "$tarball" "$image" >/dev/null
echo "debian-base.sh: $image is ready"
