#!/usr/bin/env bash
# Installs the Debian packages powgate's tests, benchmarks, images and demo
# run against, when they are missing: Prometheus (signals), Redis (the shared
# replay store; tests start their own servers on loopback), Chromium (browser
# solver), nginx and wrk (proxy benchmark references), valgrind (the request
# path's instruction counts, `python -m bench instructions`), Node.js (JS solver),
# npm (the npm packages of the browser tests, `make js-deps`); for the images
# and the real node: the Docker engine (docker.io, started by `make images`
# itself), mmdebstrap (the base image from Debian packages), containerd, the
# CNI plugins, iptables and conntrack (kube-proxy), libseccomp-dev (runc is
# built with seccomp, `make tools`); libssl-dev (powgate._native's SHA-256
# hot path is built against OpenSSL, `make venv`); gcc (the pause image, and
# `make venv` compiles powgate._native and the sidecar's request path).
set -euo pipefail

# Each package, with a file that shows it is installed.
declare -A want=(
  [prometheus]=/usr/bin/prometheus
  [redis-server]=/usr/bin/redis-server
  [chromium]=/usr/bin/chromium
  [nginx]=/usr/sbin/nginx
  [wrk]=/usr/bin/wrk
  [valgrind]=/usr/bin/valgrind
  [nodejs]=/usr/bin/node
  [npm]=/usr/bin/npm
  [docker.io]=/usr/sbin/dockerd
  [mmdebstrap]=/usr/bin/mmdebstrap
  [containerd]=/usr/bin/containerd
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [iptables]=/usr/sbin/iptables
  [conntrack]=/usr/sbin/conntrack
  [libseccomp-dev]=/usr/include/seccomp.h
  [libssl-dev]=/usr/include/openssl/sha.h
  [gcc]=/usr/bin/gcc
)
missing=()
for package in "${!want[@]}"; do
  if [ -e "${want[$package]}" ]; then
    continue
  fi
  # Node.js and npm may come from elsewhere than Debian; any on PATH will do.
  if { [ "$package" = nodejs ] || [ "$package" = npm ]; } && command -v "$(basename "${want[$package]}")" >/dev/null; then
    continue
  fi
  missing+=("$package")
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
"$(dirname "$0")/progress.sh" "apt-get install" \
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
