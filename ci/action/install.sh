#!/usr/bin/env bash
# Installs tokenctl for the runner's OS and architecture: the release
# archive, checked against the release's SHA256SUMS before it is unpacked,
# or, when the release has no such archive (a fork, an untagged commit),
# `cargo install --locked --path` on the action's own checkout.
#
# Environment:
#   TOKENCTL_VERSION      a release tag (v0.1.0); empty or not a tag: build
#   TOKENCTL_RELEASE_URL  where release assets are downloaded from, as
#                         <url>/<tag>/<asset> (default: the releases of
#                         GITHUB_ACTION_REPOSITORY on GITHUB_SERVER_URL)
#   TOKENCTL_HOME         the folder to install into (bin/tokenctl)
#   TOKENCTL_SOURCE       the checkout to build from when there is no release
# Appends the bin folder to GITHUB_PATH when set, and prints it.
set -euo pipefail

fail() {
  echo "::error::$*" >&2
  exit 1
}

: "${TOKENCTL_HOME:?TOKENCTL_HOME must name the folder to install into}"
version="${TOKENCTL_VERSION:-}"
bin="$TOKENCTL_HOME/bin"

publish() {
  if [ -n "${GITHUB_PATH:-}" ]; then
    echo "$bin" >>"$GITHUB_PATH"
  fi
  echo "$bin"
}

if [ -x "$bin/tokenctl" ]; then
  echo "tokenctl is installed already in $bin (cached)." >&2
  publish
  exit 0
fi

# The Rust target whose release archive runs here: static musl builds on
# Linux, native builds on macOS.
target() {
  local os arch
  os="$(uname -s)"
  arch="$(uname -m)"
  case "$arch" in
    x86_64 | amd64) arch=x86_64 ;;
    aarch64 | arm64) arch=aarch64 ;;
    *) fail "no tokenctl release for the architecture $arch" ;;
  esac
  case "$os" in
    Linux) echo "$arch-unknown-linux-musl" ;;
    Darwin) echo "$arch-apple-darwin" ;;
    *) fail "no tokenctl release for the OS $os" ;;
  esac
}

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# Downloads $1 to $2; prints the HTTP status (000: no answer).
download() {
  curl --silent --show-error --location --retry 3 --connect-timeout 10 \
    --max-time 300 --output "$2" --write-out '%{http_code}' "$1" || true
}

build_from_source() {
  local source="${TOKENCTL_SOURCE:-}"
  [ -n "$source" ] && [ -e "$source/Cargo.toml" ] \
    || fail "no tokenctl release asset and no source to build from (TOKENCTL_SOURCE)"
  command -v cargo >/dev/null 2>&1 \
    || fail "no tokenctl release asset for $1, and cargo is not installed to build it"
  echo "No tokenctl release asset for $1: building it with cargo (this takes minutes)." >&2
  cargo install --locked --path "$source" --root "$TOKENCTL_HOME"
  [ -x "$bin/tokenctl" ] || fail "cargo install left no $bin/tokenctl"
  publish
  exit 0
}

case "$version" in
  v[0-9]*) ;;
  *) build_from_source "version '${version}' (not a release tag)" ;;
esac

target="$(target)"
if [ -n "${TOKENCTL_RELEASE_URL:-}" ]; then
  base="${TOKENCTL_RELEASE_URL%/}"
else
  : "${GITHUB_ACTION_REPOSITORY:?set TOKENCTL_RELEASE_URL or GITHUB_ACTION_REPOSITORY}"
  base="${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_ACTION_REPOSITORY/releases/download"
fi
archive="tokenctl-$target-$version.tar.gz"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

status="$(download "$base/$version/SHA256SUMS" "$work/SHA256SUMS")"
case "$status" in
  200) ;;
  404) build_from_source "$version" ;;
  *) fail "downloading $base/$version/SHA256SUMS: HTTP status $status" ;;
esac
status="$(download "$base/$version/$archive" "$work/$archive")"
case "$status" in
  200) ;;
  404) build_from_source "$target $version" ;;
  *) fail "downloading $base/$version/$archive: HTTP status $status" ;;
esac

# Lines of sha256sum: "<hex>  <name>" (or "<hex> *<name>" in binary mode).
expected="$(awk -v name="$archive" '$2 == name || $2 == "*" name { print $1 }' "$work/SHA256SUMS")"
[ -n "$expected" ] || fail "SHA256SUMS of $version lists no $archive"
actual="$(sha256 "$work/$archive")"
if [ "$actual" != "$expected" ]; then
  fail "checksum mismatch for $archive: SHA256SUMS says $expected, the download is $actual; not installing it"
fi

tar -xzf "$work/$archive" -C "$work"
unpacked="$work/tokenctl-$target-$version/tokenctl"
[ -f "$unpacked" ] || fail "$archive holds no tokenctl-$target-$version/tokenctl"
mkdir -p "$bin"
# Into place in one rename, so a cache never holds half a binary.
cp "$unpacked" "$bin/.tokenctl.partial"
chmod 755 "$bin/.tokenctl.partial"
mv "$bin/.tokenctl.partial" "$bin/tokenctl"
echo "Installed tokenctl $version ($target), sha256 $actual." >&2
publish
