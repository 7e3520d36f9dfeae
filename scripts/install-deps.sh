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
# The cuDNN frontend (header-only C++ graph API over libcudnn.so.9, for the cuDNN attention kernel):
# the include/ folder of the nvidia-cudnn-frontend wheel, checked against its hash and unpacked into
# build-deps/ of this checkout, where CMakeLists.txt finds it. Only where CUDA is installed
# (CPTUNE_WITH_CUDNN=0 skips it); once there, nothing is fetched. A failed download is a warning:
# the build goes on without the cuDNN kernel.
frontend_version=1.32.0
frontend_wheel=nvidia_cudnn_frontend-$frontend_version-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
frontend_sha256=c6006556017a4d1c914c52a556c71b1267f2d6a0500f742e7b4edef539878df0
root=$(cd "$(dirname "$0")/.." && pwd)
frontend=$root/build-deps/cudnn-frontend-$frontend_version
if [[ "${CPTUNE_WITH_CUDNN:-1}" == 1 && -x /usr/local/cuda/bin/nvcc && ! -f $frontend/include/cudnn_frontend.h ]]; then
  download=$(mktemp -d)
  # The headers are the same in every wheel: ask for one fixed wheel, whatever python3 this is.
  if python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
       --platform manylinux_2_28_x86_64 -d "$download" "nvidia-cudnn-frontend==$frontend_version" &&
     echo "$frontend_sha256  $download/$frontend_wheel" | sha256sum --check --quiet; then
    rm -rf "$frontend.partial"
    python3 - "$download/$frontend_wheel" "$frontend.partial" <<'PY'
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
wheel.extractall(sys.argv[2], members=[m for m in wheel.namelist() if m.startswith("include/")])
PY
    mv "$frontend.partial" "$frontend"
  else
    echo "install-deps: nvidia-cudnn-frontend $frontend_version not fetched; building without the cuDNN kernel" >&2
  fi
  rm -rf "$download"
fi
