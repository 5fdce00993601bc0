# What the action's scripts share, sourced by them: the GitHub REST API
# through curl, and the step's outputs.
# shellcheck shell=bash

fail() {
  echo "::error::$*" >&2
  exit 1
}

# Appends name=value to the step's outputs.
output() {
  if [ -n "${GITHUB_OUTPUT:-}" ]; then
    echo "$1=$2" >>"$GITHUB_OUTPUT"
  fi
}

# Calls the GitHub REST API: github_api METHOD PATH [JSON-BODY-FILE].
github_api() {
  local method="$1" path="$2" body="${3:-}"
  : "${GITHUB_TOKEN:?the github-token input is empty}"
  local args=(--silent --show-error --fail-with-body --retry 3 --max-time 60
    -X "$method"
    -H "Authorization: Bearer $GITHUB_TOKEN"
    -H "Accept: application/vnd.github+json"
    -H "X-GitHub-Api-Version: 2022-11-28")
  if [ -n "$body" ]; then
    args+=(-H "Content-Type: application/json" --data-binary "@$body")
  fi
  curl "${args[@]}" "${GITHUB_API_URL:-https://api.github.com}$path"
}

# Finds the first item on any page of a list whose body starts with
# $marker and prints its field $field: find_item PATH FIELD MARKER.
find_item() {
  local path="$1" field="$2" marker="$3" page=1 found items
  local sep='?'
  case "$path" in *'?'*) sep='&' ;; esac
  while :; do
    items="$(github_api GET "$path${sep}per_page=100&page=$page")"
    found="$(jq -r --arg m "$marker" --arg f "$field" \
      'map(select((.body // "") | startswith($m))) | first | .[$f] // empty' <<<"$items")"
    if [ -n "$found" ] || [ "$(jq 'length' <<<"$items")" -lt 100 ]; then
      echo "$found"
      return 0
    fi
    page=$((page + 1))
  done
}

# Lets git fetch and push with the job's token, in place of any credentials
# the checkout persisted (an empty value clears the list of headers first);
# through the environment, so the token is on no command line.
git_auth() {
  [ -n "${GITHUB_TOKEN:-}" ] || return 0
  local server="${GITHUB_SERVER_URL:-https://github.com}" basic
  basic="$(printf 'x-access-token:%s' "$GITHUB_TOKEN" | base64 | tr -d '\n')"
  echo "::add-mask::$basic"
  export GIT_CONFIG_COUNT=2
  export GIT_CONFIG_KEY_0="http.$server/.extraheader" GIT_CONFIG_VALUE_0=""
  export GIT_CONFIG_KEY_1="http.$server/.extraheader" GIT_CONFIG_VALUE_1="AUTHORIZATION: basic $basic"
}
