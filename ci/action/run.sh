#!/usr/bin/env bash
# Runs one tokenctl job as a GitHub Actions step; also runs outside GitHub
# given the environment GitHub sets.
#
#   plan   plan --output markdown --detailed-exitcode; on a pull request,
#          create or update the one comment that starts with the plan's
#          marker; fails on exit 1 only (2 means changes).
#   apply  on the latest commit of the pushed branch (not the one that
#          started the run), plan to a file and apply exactly that plan;
#          keeps apply's exit code through the pipe to the log. The state
#          is recorded by record.sh, which runs after this whatever it did.
#   drift  plan --refresh; when anything drifted or the refresh failed,
#          open or update the one open issue labelled tokenctl-drift.
#
# Environment: TOKENCTL_COMMAND, TOKENCTL_ARGS (split on blanks; for each
# plan and apply), TOKENCTL_APPLY_ARGS (split on blanks; apply only),
# TOKENCTL_MANIFEST, TOKENCTL_COMMENT (true/false), TOKENCTL_COMMIT_STATE
# (true/false), TOKENCTL_APPLY_TIMEOUT (e.g. 45m; empty: none), GITHUB_*,
# RUNNER_TEMP, GITHUB_TOKEN. Outputs: exitcode, has-changes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=SCRIPTDIR/github.sh
. "$here/github.sh"

command="${TOKENCTL_COMMAND:-}"
# Word splitting is the point: `args: --max-creates 10 --target 1/a`.
# shellcheck disable=SC2206
args=(-f "${TOKENCTL_MANIFEST:-tokens.yaml}" ${TOKENCTL_ARGS:-})
# shellcheck disable=SC2206
apply_args=(${TOKENCTL_APPLY_ARGS:-})
temp="${RUNNER_TEMP:-${TMPDIR:-/tmp}}"
summary="${GITHUB_STEP_SUMMARY:-/dev/null}"

# The pull request's number, or nothing outside a pull request.
pull_request() {
  case "${GITHUB_EVENT_NAME:-}" in
    pull_request | pull_request_target)
      jq -r '.pull_request.number // empty' "${GITHUB_EVENT_PATH:?}"
      ;;
  esac
}

# Creates or updates the one comment of pull request $1 that starts with
# the plan's marker, with the body in $2.
sticky_comment() {
  local number="$1" file="$2" marker body id
  marker="$(head -n 1 "$file")"
  [ "$marker" = "<!-- tokenctl-plan -->" ] || fail "the plan has no marker line: $marker"
  body="$temp/tokenctl-comment.json"
  jq -Rs '{body: .}' "$file" >"$body"
  local repo="/repos/${GITHUB_REPOSITORY:?}"
  id="$(find_item "$repo/issues/$number/comments" id "$marker")"
  if [ -n "$id" ]; then
    github_api PATCH "$repo/issues/comments/$id" "$body" >/dev/null
    echo "Updated the plan comment on pull request #$number." >&2
  else
    github_api POST "$repo/issues/$number/comments" "$body" >/dev/null
    echo "Posted the plan comment on pull request #$number." >&2
  fi
}

plan() {
  local report="$temp/tokenctl-plan.md" code=0
  tokenctl plan --output markdown --detailed-exitcode "${args[@]}" >"$report" || code=$?
  output exitcode "$code"
  output has-changes "$([ "$code" -eq 2 ] && echo true || echo false)"
  if [ "$code" -eq 1 ]; then
    # The comment must not go on showing the last plan that worked.
    # shellcheck disable=SC2016 # backticks for Markdown
    printf '%s\n**`tokenctl plan` failed (exit 1); see %s/%s/actions/runs/%s.**\n' \
      "<!-- tokenctl-plan -->" "${GITHUB_SERVER_URL:-https://github.com}" \
      "${GITHUB_REPOSITORY:-}" "${GITHUB_RUN_ID:-}" >"$report"
  fi
  cat "$report" >>"$summary"
  local number
  number="$(pull_request)"
  if [ "${TOKENCTL_COMMENT:-true}" = true ] && [ -n "$number" ] && [ -s "$report" ]; then
    sticky_comment "$number" "$report"
  fi
  # 0: no changes, 2: changes; 1: invalid manifest, corrupt state or over budget.
  [ "$code" -ne 1 ] || fail "tokenctl plan failed (exit 1); see the log"
}

# Checks out the branch's latest commit: a later merge's run may have
# recorded tokens since this run's commit, and its state must be planned on.
latest_branch() {
  case "${GITHUB_REF:-}" in
    refs/heads/*) ;;
    *) fail "apply runs on a push to a branch, not on ${GITHUB_REF:-an unknown ref}" ;;
  esac
  local branch="${GITHUB_REF#refs/heads/}" deepen=()
  git_auth
  if [ "$(git rev-parse --is-shallow-repository)" = true ]; then
    # The whole history, to rebase the state commit later.
    deepen=(--unshallow)
  fi
  git fetch --quiet ${deepen[@]+"${deepen[@]}"} origin "+refs/heads/$branch:refs/remotes/origin/$branch"
  git checkout --quiet -B "$branch" "origin/$branch"
  echo "Planning on the latest $branch: $(git rev-parse --short HEAD)." >&2
}

apply() {
  local code=0 timeout=() plan=(tokens.plan)
  if [ "${TOKENCTL_COMMIT_STATE:-true}" = true ]; then
    latest_branch
    tokenctl plan -o tokens.plan --detailed-exitcode "${args[@]}" || code=$?
  else
    # The state lives in a backend (PostgreSQL): no branch to move to, and
    # apply plans again under the backend's lock, waiting for another
    # pipeline's apply with --lock-timeout rather than finding its saved
    # plan stale.
    tokenctl plan --detailed-exitcode "${args[@]}" || code=$?
    plan=(--auto-approve)
  fi
  output has-changes "$([ "$code" -eq 2 ] && echo true || echo false)"
  if [ "$code" -eq 1 ]; then
    output exitcode 1
    fail "tokenctl plan failed (exit 1); nothing was applied"
  fi
  # Stops apply (SIGINT: it records every outcome, then exits 130) before
  # the job's own timeout, so that the steps after it can record the state.
  if [ -n "${TOKENCTL_APPLY_TIMEOUT:-}" ] && command -v timeout >/dev/null 2>&1; then
    timeout=(timeout --preserve-status --kill-after=5m --signal=INT "$TOKENCTL_APPLY_TIMEOUT")
  fi
  code=0
  # pipefail (set above): apply's exit code, not tee's. Exit 3: creates in
  # doubt, recorded in the state; a person runs `tokenctl resolve`.
  # 1: a failure; 130: interrupted.
  ${timeout[@]+"${timeout[@]}"} tokenctl apply "${plan[@]}" --output json "${args[@]}" ${apply_args[@]+"${apply_args[@]}"} | tee apply.jsonl || code=$?
  output exitcode "$code"
  if [ "$code" -ne 0 ]; then
    echo "::error::tokenctl apply exited $code; see the log (3: creates in doubt, settle each with tokenctl resolve)" >&2
    exit "$code"
  fi
}

drift() {
  local report="$temp/tokenctl-drift.md" code=0
  tokenctl plan --refresh --detailed-exitcode --output markdown "${args[@]}" >"$report" || code=$?
  output exitcode "$code"
  output has-changes "$([ "$code" -ne 0 ] && echo true || echo false)"
  cat "$report" >>"$summary"
  # 0: nothing drifted; 2: revoked tokens or creates (rotations) due; 1: an
  # error, a misdelivered token or a stampede of revocations. The issue is
  # the signal of drift; a check that could not check fails the step too.
  [ "$code" -ne 0 ] || return 0
  if [ "${TOKENCTL_COMMENT:-true}" = true ]; then
    drift_issue "$code" "$report"
  fi
  [ "$code" -ne 1 ] || fail "tokenctl plan --refresh failed (exit 1); see the log"
}

# Opens the drift issue, or updates the open one, with the report in $2.
drift_issue() {
  local code="$1" report="$2"
  local body="$temp/tokenctl-issue.json" repo="/repos/${GITHUB_REPOSITORY:?}" number
  local headline=""
  if [ "$code" -eq 1 ]; then
    headline="**\`tokenctl plan --refresh\` failed (exit 1); see ${GITHUB_SERVER_URL:-https://github.com}/$GITHUB_REPOSITORY/actions/runs/${GITHUB_RUN_ID:-}.**"$'\n\n'
  fi
  number="$(github_api GET "$repo/issues?state=open&labels=tokenctl-drift&per_page=1" | jq -r 'first | .number // empty')"
  if [ -n "$number" ]; then
    jq -Rs --arg h "$headline" '{body: ($h + .)}' "$report" >"$body"
    github_api PATCH "$repo/issues/$number" "$body" >/dev/null
    echo "Updated drift issue #$number." >&2
  else
    jq -Rs --arg h "$headline" \
      '{title: "tokenctl: Logz.io tokens drifted", body: ($h + .), labels: ["tokenctl-drift"]}' \
      "$report" >"$body"
    github_api POST "$repo/issues" "$body" >/dev/null
    echo "Opened a drift issue." >&2
  fi
}

case "$command" in
  plan) plan ;;
  apply) apply ;;
  drift) drift ;;
  *) fail "command must be plan, apply or drift, not '$command'" ;;
esac
