#!/usr/bin/env bash
# Installs every Debian package cptune needs to build, test and benchmark. Idempotent; run as root.
set -euo pipefail
packages=(
  build-essential cmake pkg-config ccache
  clang libclang-rt-14-dev
  libgloo-dev libeigen3-dev libboost-program-options-dev libsqlite3-dev sqlite3
  nlohmann-json3-dev libfmt-dev libtinyxml2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  redis-server
  python3 python3-matplotlib python3-venv python3-pip python3-setuptools python3-wheel python3-numpy
  openmpi-bin
)
# torchrun for the launcher tests (tests/launchers/check_launchers.sh); CPTUNE_WITH_TORCH=0 skips it.
if [[ "${CPTUNE_WITH_TORCH:-1}" == 1 ]]; then packages+=(python3-torch); fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO=sudo
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
