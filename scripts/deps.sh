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
  "cmd:valgrind:valgrind"
  "cmd:timeout:coreutils"
  # Applications that load the module (tests/tests/{openssl_engine,java_sunpkcs11,gnutls,nss,p11kit}.rs)
  "file:/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so:libengine-pkcs11-openssl"
  "cmd:p11tool:gnutls-bin"
  "cmd:certtool:gnutls-bin"
  "cmd:modutil:libnss3-tools"
  "cmd:certutil:libnss3-tools"
  "cmd:selfserv:libnss3-tools"
  "cmd:tstclnt:libnss3-tools"
  "cmd:p11-kit:p11-kit"
  "file:/usr/lib/x86_64-linux-gnu/p11-kit-proxy.so:p11-kit-modules"
  "cmd:javac:openjdk-17-jdk-headless"
  "cmd:keytool:openjdk-17-jdk-headless"
  "cmd:jarsigner:openjdk-17-jdk-headless"
  # The cluster rig (tests/tests/cluster.rs): three etcd members, and etcdctl for the dump.
  "cmd:etcd:etcd-server"
  "cmd:etcdctl:etcd-client"
)

missing=()
for c in "${checks[@]}"; do
  IFS=: read -r kind what pkg <<<"$c"
  case "$kind" in
    cmd) command -v "$what" >/dev/null 2>&1 || missing+=("$pkg") ;;
    file) [ -e "$what" ] || missing+=("$pkg") ;;
  esac
done

# One package may cover several checks.
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
fi

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
