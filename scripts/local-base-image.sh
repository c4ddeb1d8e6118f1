#!/bin/sh
# A local stand-in for python:3.11-slim-bookworm, built from Debian packages, for machines
# that reach no container registry (CI here):
#
#   scripts/local-base-image.sh        prints the image name once it exists
#
# Debian 12 (debootstrap, minbase) with python3 (3.11), pip, venv and `python`, which is
# what the Dockerfile uses of its base (PYTHON_IMAGE), imported into the local
# containers storage that buildah and podman share. Then:
#
#   buildah bud --build-arg PYTHON_IMAGE="$(scripts/local-base-image.sh)" .
#
# The image is a cache: its tag holds a hash of this script, so it is built once per
# machine and again only when this script changes. Needs root, debootstrap and podman.
set -eu

mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-pip,python3-venv,python-is-python3,ca-certificates
hash=$(sha256sum "$0" | cut -c1-12)
image=localhost/fleet-exporter-base:bookworm-$hash

if podman image exists "$image"; then
  echo "$image"
  exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/fleet-exporter-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "debootstrap bookworm into $work (a minute or two)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$work/rootfs" "$mirror" >&2
# Like the official slim images: no package lists, caches, docs or man pages.
rm -rf "$work/rootfs/var/lib/apt/lists/"* "$work/rootfs/var/cache/apt/"*.bin \
  "$work/rootfs/usr/share/doc/"* "$work/rootfs/usr/share/man/"* "$work/rootfs/tmp/"*
tar -C "$work/rootfs" --numeric-owner -c . |
  podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >&2
echo "$image"
