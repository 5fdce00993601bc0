#!/usr/bin/env bash
# Decides which tokenctl to install and where, before the cache is looked
# up: the version (the `version` input, else the action's own ref), a
# folder per version, OS and architecture, and whether it may be cached (a
# release tag or a commit, never a branch, whose content moves).
#
# Environment: TOKENCTL_VERSION_INPUT, TOKENCTL_ACTION_REF, RUNNER_TOOL_CACHE
# or RUNNER_TEMP. Outputs: version, home, cacheable, cache-key.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/github.sh
. "$here/github.sh"

version="${TOKENCTL_VERSION_INPUT:-${TOKENCTL_ACTION_REF:-}}"
platform="$(uname -s)-$(uname -m)"
cacheable=false
case "$version" in
  v[0-9]*) cacheable=true ;;
  *)
    if [[ "$version" =~ ^[0-9a-f]{40}$ ]]; then
      cacheable=true
    fi
    ;;
esac
if [[ ! "$version" =~ ^[A-Za-z0-9._/-]*$ ]]; then
  fail "version '$version' is not a tag, a branch or a commit"
fi
root="${RUNNER_TOOL_CACHE:-${RUNNER_TEMP:?}}/tokenctl"
if [ "$cacheable" = true ]; then
  home="$root/$version/$platform"
else
  # Built from the action's checkout each time: a branch moves.
  home="$root/build-$$/$platform"
fi
output version "$version"
output home "$home"
output cacheable "$cacheable"
output cache-key "tokenctl-$version-$platform"
echo "tokenctl $version for $platform into $home (cacheable: $cacheable)" >&2
