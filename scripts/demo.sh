#!/usr/bin/env bash
# The main job on the embedded default: build the module, initialize a token in a temporary
# home, and drive it with pkcs11-tool (list, PINs, write and read objects, hash, random, an EC
# key pair whose signature openssl verifies, AES encryption with a key that never leaves).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh

cargo build --release --locked -p ferrohsm-pkcs11 -p ferrohsm-cli
MODULE="$PWD/target/release/libferrohsm_pkcs11.so"
FERROHSM="$PWD/target/release/ferrohsm"
export FERROHSM_HOME
FERROHSM_HOME="$(mktemp -d)"
work="$(mktemp -d)"
trap 'rm -rf "$FERROHSM_HOME" "$work"' EXIT

p11() { echo "+ pkcs11-tool $*" >&2; pkcs11-tool --module "$MODULE" "$@"; }

p11 --show-info
p11 --list-slots
p11 --init-token --slot 0 --label demo --so-pin 12345678
p11 --slot 0 --init-pin --login --so-pin 12345678 --pin 123456

echo "hello, HSM" >"$work/hello.txt"
p11 --slot 0 --login --pin 123456 --write-object "$work/hello.txt" --type data --label hello
p11 --slot 0 --login --pin 123456 --read-object --type data --label hello --output-file "$work/back.txt"
cmp "$work/hello.txt" "$work/back.txt" && echo "data object: read back equal"

head -c 32 /dev/urandom >"$work/aes.key"
p11 --slot 0 --login --pin 123456 --write-object "$work/aes.key" --type secrkey --key-type AES:32 \
  --label aes --id 02 --sensitive --usage-decrypt
if p11 --slot 0 --login --pin 123456 --read-object --type secrkey --label aes \
  --output-file "$work/leak.key" 2>"$work/err.txt"; then
  echo "ERROR: a sensitive key was readable" >&2
  exit 1
fi
echo "sensitive key: $(grep -o 'CKR_[A-Z_]*' "$work/err.txt" | head -1) as it should"

p11 --slot 0 --hash -m SHA256 -i "$work/hello.txt" -o "$work/h.bin"
echo "SHA-256 by the token: $(od -An -tx1 "$work/h.bin" | tr -d ' \n')"
echo "SHA-256 by sha256sum: $(sha256sum "$work/hello.txt" | cut -d' ' -f1)"
p11 --slot 0 --generate-random 16 | od -An -tx1

# A key pair generated in the token signs; plain openssl verifies with the exported public key.
p11 --slot 0 --login --pin 123456 --keypairgen --key-type EC:prime256v1 --id 01 --label demo-ec
p11 --slot 0 --login --pin 123456 --sign -m ECDSA-SHA256 --id 01 -i "$work/hello.txt" \
  -o "$work/sig" --signature-format openssl
p11 --slot 0 --read-object --type pubkey --id 01 -o "$work/pub.der"
openssl dgst -sha256 -keyform DER -verify "$work/pub.der" -signature "$work/sig" "$work/hello.txt"

# The token's AES key encrypts and decrypts (the key itself never leaves).
p11 --slot 0 --login --pin 123456 --encrypt -m AES-CBC-PAD --id 02 \
  --iv 000102030405060708090a0b0c0d0e0f -i "$work/hello.txt" -o "$work/ct"
p11 --slot 0 --login --pin 123456 --decrypt -m AES-CBC-PAD --id 02 \
  --iv 000102030405060708090a0b0c0d0e0f -i "$work/ct" -o "$work/pt"
cmp "$work/hello.txt" "$work/pt" && echo "AES-CBC-PAD: decrypted text equal"

p11 --slot 0 --login --pin 123456 --list-objects
"$FERROHSM" slots
"$FERROHSM" objects --pin 123456
echo "demo: OK (home was $FERROHSM_HOME)"
