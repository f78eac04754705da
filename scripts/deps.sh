#!/usr/bin/env bash
# Installs the Debian packages FerroHSM's demo and tests drive, when they are missing.
# Safe to run again: it installs nothing when everything is there.
set -euo pipefail

# command or file to look for -> Debian package
checks=(
  "cmd:pkcs11-tool:opensc"
  "cmd:softhsm2-util:softhsm2"
  "cmd:openssl:openssl"
  "cmd:sha256sum:coreutils"
  "cmd:cc:gcc"
)

missing=()
for c in "${checks[@]}"; do
  IFS=: read -r kind what pkg <<<"$c"
  case "$kind" in
    cmd) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
    file) [ -e "$what" ] || missing+=("$pkg") ;;
  esac
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "deps: installing ${missing[*]}" >&2
sudo=""
if [ "$(id -u)" != 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get install -y --no-install-recommends "${missing[@]}" >/dev/null 2>&1 || {
  $sudo apt-get update -qq
  $sudo apt-get install -y --no-install-recommends "${missing[@]}"
}
