#!/bin/sh
# Make sure the system tools the tests drive are there, from Debian packages.
#
#   scripts/system-packages.sh [--missing] NAME=PACKAGE...
#
# NAME is a command, or a shared library (a name with .so in it); PACKAGE is installed when
# NAME is not on PATH (not known to ldconfig). With --missing, every PACKAGE is installed
# (for a NAME that is neither, which the caller found missing).
# As root with apt-get, the missing packages are installed (idempotent: nothing happens
# when all are there). Otherwise it prints one line with the exact command and fails.
set -eu

present() {
  case $1 in
    *.so*) { ldconfig -p 2>/dev/null || /sbin/ldconfig -p; } | grep -q "^[[:space:]]*$1 " ;;
    *) command -v "$1" >/dev/null 2>&1 ;;
  esac
}

check=1
if [ "${1-}" = --missing ]; then
  check=0
  shift
fi

names=""
packages=""
for pair in "$@"; do
  name=${pair%%=*}
  package=${pair#*=}
  if [ "$check" = 1 ] && present "$name"; then
    continue
  fi
  names="$names $name"
  case " $packages " in
    *" $package "*) ;;
    *) packages="$packages $package" ;;
  esac
done
[ -n "$packages" ] || exit 0

command="apt-get install -y --no-install-recommends$packages"
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing:$names. Install with: sudo apt-get update && sudo $command" \
    "(Debian 12 package names; use your system's equivalents elsewhere)" >&2
  exit 1
fi

echo "installing$packages (missing:$names)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q --no-install-recommends $packages
