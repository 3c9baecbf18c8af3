#!/usr/bin/env bash
# tests/support/deps.sh - make sure every Debian package kubelua needs is present.
#
# Usage: tests/support/deps.sh
#
# The list covers building (compiler, cmake, sanitizer runtime, formatter),
# the libraries the agent links against, the containerd/runc pair the
# integration tests drive, the busybox binary test images are made from, and
# the Python tooling some tests use as a fake gRPC peer.
#
# It is meant to be run at the start of every CI job and by developers, so it
# is cheap when nothing is missing: one dpkg-query call, no network.  Only
# when something is absent does it refresh the package index (once) and call
# apt-get install, non-interactively and without recommended extras.
set -euo pipefail

PACKAGES=(
    # toolchain
    build-essential cmake pkg-config clang libclang-rt-14-dev clang-format
    # LuaJIT runtime and headers
    libluajit-5.1-dev luajit
    # protocol / transport libraries linked by the agent
    libprotobuf-c-dev protobuf-c-compiler libnghttp2-dev libcurl4-openssl-dev
    libuv1-dev libyaml-dev libedit-dev
    # container runtime used by the integration tests
    containerd runc busybox-static
    # helpers used by tests
    python3 python3-h2 python3-grpcio python3-yaml tmux iproute2 openssl nginx-light curl
    # promtool and a Prometheus server check the agent's /metrics
    prometheus
    # memory checking of the C code (the valgrind.* ctest tests)
    valgrind
    # JSON for the Kubernetes API client
    lua-cjson
)
# kubectl checks the fake API server; any kubectl will do (the machine image
# may bring Google's package, which conflicts with Debian's over the path).
command -v kubectl >/dev/null 2>&1 || PACKAGES+=(kubernetes-client)

# Collect the packages dpkg does not report as fully installed.  Asking for
# all of them in a single dpkg-query keeps the all-present case fast.  For a
# package dpkg has never heard of, dpkg-query prints nothing for it (and
# complains on stderr), so we compare name by name rather than count lines.
missing=()
status_lines=$(dpkg-query -W -f='${Package} ${Status}\n' "${PACKAGES[@]}" 2>/dev/null || true)
for pkg in "${PACKAGES[@]}"; do
    # Status for an installed package reads "install ok installed".
    # Architecture-qualified names (pkg:amd64) are reduced to the bare name.
    if ! grep -qE "^${pkg}(:[a-z0-9]+)? install ok installed\$" <<<"$status_lines"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

echo "deps: installing ${missing[*]}"

# Root is needed for apt-get; use sudo only if we are not root already.
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"

# Double-check, so a silently skipped package fails here and not later in a
# confusing build or test error.
still=()
for pkg in "${missing[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)" != "install ok installed" ]; then
        still+=("$pkg")
    fi
done
if [ "${#still[@]}" -ne 0 ]; then
    echo "deps: still missing after install: ${still[*]}" >&2
    exit 1
fi
echo "deps: done"
