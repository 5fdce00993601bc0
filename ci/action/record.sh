#!/usr/bin/env bash
# Records what an apply did, whatever it did (GitHub runs this step also
# after a failure or a cancel): folds a journal left by an interrupted
# apply into the state, so that its open creates become creates in doubt
# instead of being sent again, then commits the state (and the journal,
# should the fold have failed) and pushes it to the branch, rebasing on the
# latest commit and retrying while another push gets there first.
#
# Environment: TOKENCTL_MANIFEST, GITHUB_REF (refs/heads/<branch>),
# GITHUB_TOKEN and GITHUB_SERVER_URL (to fetch and push over https without
# the checkout's persisted credentials).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/github.sh
. "$here/github.sh"

manifest="${TOKENCTL_MANIFEST:-tokens.yaml}"
branch="${GITHUB_REF:?}"
branch="${branch#refs/heads/}"
state=state/tokens.state.json

git_auth

# Exits 0 also when there was nothing to fold. Should it fail, the journal
# is committed instead, and the step fails after the push.
folded=true
tokenctl state fold -f "$manifest" || folded=false

git config user.name "tokenctl"
git config user.email "tokenctl@users.noreply.github.com"
if [ -e "$state" ]; then
  git add "$state"
fi
# The SOPS files the apply wrote or removed, wherever the manifest's
# secrets.sops.dir puts them (encrypted, and meant to be committed). Only
# when there are any: an empty list of paths would add everything.
if [ -n "$(git ls-files --others --modified --deleted --exclude-standard -- '*.sops.yaml' '*.sops.yaml.previous')" ]; then
  git ls-files -z --others --modified --deleted --exclude-standard -- '*.sops.yaml' '*.sops.yaml.previous' |
    git add --all --pathspec-from-file=- --pathspec-file-nul
fi
# A journal is left only if the fold failed: commit it as well, so that the
# next run folds it instead of sending its creates again.
if [ -e "$state.journal" ]; then
  git add --force "$state.journal"
else
  git rm --cached --quiet --ignore-unmatch "$state.journal"
fi
if ! git diff --cached --quiet; then
  git commit --quiet -m "tokenctl: record applied tokens"
fi

for attempt in 1 2 3 4 5; do
  git fetch --quiet origin "+refs/heads/$branch:refs/remotes/origin/$branch"
  if ! git rebase --quiet "origin/$branch"; then
    git rebase --abort
    fail "the state changed on $branch since this run started; the state of this run is kept as an artifact: merge it by hand"
  fi
  if [ -z "$(git rev-list "origin/$branch..HEAD")" ]; then
    echo "The state on $branch is up to date."
    break
  fi
  if git push --quiet origin "HEAD:$branch"; then
    echo "Pushed the state to $branch."
    break
  fi
  if [ "$attempt" -eq 5 ]; then
    fail "could not push the state to $branch; it is kept as an artifact"
  fi
  sleep "$attempt"
done
[ "$folded" = true ] || fail "tokenctl state fold failed: the journal was committed for the next run to fold"
