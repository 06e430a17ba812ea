#!/usr/bin/env bash
# Installs the Debian packages powgate's tests, benchmarks and demo run
# against, when they are missing: Prometheus (signals), Chromium (browser
# solver), nginx and wrk (proxy benchmark references), Node.js (JS solver) and
# npm (installs the npm packages of the browser tests, `make js-deps`).
set -euo pipefail

declare -A want=(
  [prometheus]=prometheus
  [chromium]=chromium
  [nginx]=nginx
  [wrk]=wrk
  [node]=nodejs
  [npm]=npm
)
missing=()
for cmd in "${!want[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/usr/bin/$cmd" ]; then
    missing+=("${want[$cmd]}")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo ">> installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# The packaged services must not start on their own: tests start their own
# instances on loopback with their own configuration.
$SUDO sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d'
trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
