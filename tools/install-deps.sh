#!/usr/bin/env bash
# Installs the Debian 12 packages EoRA Serve needs to build, test and run.
# Usage: sudo tools/install-deps.sh   (or as root)
# Idempotent: packages already present are left as they are.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake ninja-build pkg-config ccache git ca-certificates
  # libraries
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler grpc-proto
  prometheus-cpp-dev libcpp-httplib-dev libssl-dev nlohmann-json3-dev
  libsqlite3-dev liblapacke-dev libopenblas-dev
  # test-side tools (reference math, Python gRPC client, metrics lint)
  python3 python3-numpy python3-grpcio python3-grpc-tools prometheus curl
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
    echo "install-deps.sh: run as root or install sudo" >&2; exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -eq 0 ]; then
  echo "install-deps.sh: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi
echo "install-deps.sh: installing ${#missing[@]} packages: ${missing[*]}"
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The `prometheus` package is installed for `promtool` (metrics lint in tests). On a
# systemd machine Debian also starts a Prometheus server on :9090: stop and disable
# it when this script was the one that installed it.
if printf '%s\n' "${missing[@]}" | grep -qx prometheus && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
  echo "install-deps.sh: disabled the prometheus service that the package started (promtool stays)"
fi
