#!/usr/bin/env bash
# Run a long, quiet command (a cold Go build, apt-get, pip) and say every 30 s
# on stderr that it is still going, so that a build of many minutes is seen
# to be alive, in a terminal and in CI logs alike.
# Usage: hack/progress.sh LABEL COMMAND [ARG...]; exits with the command's status.
set -euo pipefail
label=$1
shift
started=$SECONDS
(
  # The sleep holds no output open: a pipe reading this script's output closes
  # when the command ends, not up to 30 s later.
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  while true; do
    sleep 30 </dev/null >/dev/null 2>&1 &
    sleeper=$!
    wait "$sleeper"
    elapsed=$((SECONDS - started))
    echo ">> $label: still going after $((elapsed / 60)) min $((elapsed % 60)) s" >&2
  done
) &
heartbeat=$!
trap 'kill "$heartbeat" 2>/dev/null || true' EXIT
status=0
"$@" || status=$?
elapsed=$((SECONDS - started))
if [ "$elapsed" -ge 30 ]; then
  echo ">> $label: finished after $((elapsed / 60)) min $((elapsed % 60)) s (exit $status)" >&2
fi
exit "$status"
