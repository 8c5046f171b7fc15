#!/usr/bin/env bash
# The offline base of the Docker judge: a root filesystem in ROOTFS that stands in for
# python:3.8-slim when no registry can be reached.
#   contest/judge_base.sh ROOTFS PYTHON_HOME
# ROOTFS (absent or empty) gets Debian bookworm minbase from Debian's archive
# (debootstrap, root only) with the shared libraries CPython needs and unzip, then
# the CPython at PYTHON_HOME (e.g. pyenv's /root/.pyenv/versions/3.8.18), copied to the
# same path (its RUNPATH points there) and linked as /usr/local/bin/python3, python, pip.
# It ends by running that Python inside ROOTFS (chroot) on the modules pip and the
# judge's packages need. contest/docker_judge.py hashes this file to tag the image it
# imports from ROOTFS, so editing the recipe rebuilds the base.
set -euo pipefail

rootfs="${1:?usage: judge_base.sh ROOTFS PYTHON_HOME}"
python_home="${2:?usage: judge_base.sh ROOTFS PYTHON_HOME}"
suite=bookworm
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# what CPython's extension modules link against (ldd of lib-dynload/*.so), minus Tk/X11
libs=libssl3,libffi8,zlib1g,libbz2-1.0,liblzma5,libsqlite3-0,libreadline8,libncursesw6,libuuid1,libexpat1,libnsl2,libtirpc3,libcrypt1
tools=unzip,ca-certificates

python="$(find "$python_home/bin" -maxdepth 1 -name 'python3.[0-9]*' ! -name '*-config' | sort | head -n1)"
if [ -z "$python" ]; then
  echo "judge_base.sh: no python3.X in $python_home/bin" >&2
  exit 2
fi
if [ "$(id -u)" != 0 ] || ! command -v debootstrap >/dev/null; then
  echo "judge_base.sh: needs root and debootstrap (apt-get install debootstrap)" >&2
  exit 2
fi
if [ -d "$rootfs" ] && [ -n "$(ls -A "$rootfs")" ]; then
  echo "judge_base.sh: $rootfs is not empty" >&2
  exit 2
fi

debootstrap --variant=minbase --include="$libs,$tools" "$suite" "$rootfs" "$mirror" >&2

mkdir -p "$rootfs$(dirname "$python_home")"
cp -a "$python_home" "$rootfs$python_home"
# only pip and setuptools come along, not the packages (or .pth hooks) added on this machine
site="$(find "$rootfs$python_home/lib" -maxdepth 2 -type d -name site-packages | head -n1)"
for entry in "$site"/*; do
  case "$(basename "$entry")" in
    pip|pip-*|setuptools|setuptools-*|pkg_resources|_distutils_hack|distutils-precedence.pth|README.txt) ;;
    *) rm -rf "$entry" ;;
  esac
done
find "$rootfs$python_home" -name __pycache__ -type d -prune -exec rm -rf {} +
name="$(basename "$python")"
ln -sf "$python_home/bin/$name" "$rootfs/usr/local/bin/python3"
ln -sf "$python_home/bin/$name" "$rootfs/usr/local/bin/python"
ln -sf "$python_home/bin/pip3" "$rootfs/usr/local/bin/pip"
ln -sf "$python_home/bin/pip3" "$rootfs/usr/local/bin/pip3"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*

chroot "$rootfs" /usr/local/bin/python3 -c \
  "import bz2, ctypes, hashlib, lzma, sqlite3, ssl, uuid, zlib, sys; print('python', sys.version.split()[0])" >&2
chroot "$rootfs" /usr/local/bin/pip --version >&2
