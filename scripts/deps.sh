#!/usr/bin/env bash
# Install what kvmig needs to build and test, from Debian's archive only.
# As root: apt-get installs what is missing. Otherwise: print the one line
# to run and fail.
set -euo pipefail

PKGS=(build-essential meson ninja-build pkg-config clang libclang-rt-14-dev qemu-system-x86
      libcmocka-dev libjansson-dev libxxhash-dev libzstd-dev liblz4-dev
      zlib1g-dev python3 iproute2 libgnutls28-dev gnutls-bin)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
		|| missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "kvmig: missing packages; run as root:" >&2
	echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
	exit 1
fi
echo "kvmig: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
