#!/usr/bin/env bash
# Measures what a pipeline waits for before tokenctl's first line of
# output, both ways the CI step can get tokenctl:
#
#   release  the action's install step (ci/action/install.sh): download the
#            archive and SHA256SUMS from a stand-in of the release host on
#            loopback, verify, unpack; then `tokenctl --version`. RUNS times
#            into empty folders; min, median and max.
#   cargo    `cargo install --locked --path .` into an empty target folder
#            (the crates already downloaded), once: it takes minutes.
#
# The cargo build also makes the binary the release archive holds, packed
# as the release workflow packs it (this machine's own target: no musl
# target can be installed here; the archive's size is what matters). Usage: ci/bench/install.sh [RUNS]
# (default 20). SKIP_CARGO=<path of a tokenctl release binary> skips the
# cargo measurement and packs that binary instead.
set -euo pipefail
cd "$(dirname "$0")/../.."
runs="${1:-20}"
work="$(mktemp -d)"
server=""
cleanup() {
  if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }

if [ -n "${SKIP_CARGO:-}" ]; then
  binary="$SKIP_CARGO"
else
  echo "cargo install --locked --path . into an empty target folder..." >&2
  start="$(now)"
  CARGO_TARGET_DIR="$work/target" cargo install --quiet --locked --path . --root "$work/cargo-root"
  "$work/cargo-root/bin/tokenctl" --version >/dev/null
  cargo_seconds="$(elapsed "$start" "$(now)")"
  binary="$work/cargo-root/bin/tokenctl"
fi

# The release, laid out as .github/workflows/release.yml lays it out.
version="v$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
case "$(uname -m)" in
  x86_64 | amd64) target=x86_64-unknown-linux-musl ;;
  aarch64 | arm64) target=aarch64-unknown-linux-musl ;;
esac
folder="tokenctl-$target-$version"
mkdir -p "$work/site/$version" "$work/pack/$folder"
cp "$binary" README.md "$work/pack/$folder/"
tar -C "$work/pack" -czf "$work/site/$version/$folder.tar.gz" "$folder"
(cd "$work/site/$version" && sha256sum "$folder.tar.gz" >SHA256SUMS)
size="$(wc -c <"$work/site/$version/$folder.tar.gz")"

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory "$work/site" "$port" >/dev/null 2>&1 &
server=$!
for _ in $(seq 50); do
  curl --silent --output /dev/null "http://127.0.0.1:$port/" && break
  sleep 0.1
done

times=()
for run in $(seq "$runs"); do
  home="$work/home-$run"
  start="$(now)"
  bin="$(TOKENCTL_VERSION="$version" TOKENCTL_RELEASE_URL="http://127.0.0.1:$port" \
    TOKENCTL_HOME="$home" GITHUB_PATH="" ci/action/install.sh 2>/dev/null)"
  "$bin/tokenctl" --version >/dev/null
  times+=("$(elapsed "$start" "$(now)")")
done
sorted="$(printf '%s\n' "${times[@]}" | sort -n)"
min="$(head -n 1 <<<"$sorted")"
max="$(tail -n 1 <<<"$sorted")"
median="$(awk -v n="$runs" 'NR == int((n + 1) / 2) { print }' <<<"$sorted")"

echo "archive: $folder.tar.gz, $size bytes"
echo "release install + first line: min ${min}s, median ${median}s, max ${max}s ($runs runs)"
if [ -n "${SKIP_CARGO:-}" ]; then
  echo "cargo install --locked --path . (empty target folder): not measured (SKIP_CARGO)"
else
  echo "cargo install --locked --path . (empty target folder): ${cargo_seconds}s"
fi
