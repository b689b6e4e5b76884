#!/usr/bin/env bash
# Build, once, a minimal arm64 Debian root with python3, numpy and the aarch64 onnxruntime wheel, for
# running edgevis' ARM graphs under qemu user-mode emulation (tools/arm/arm_check.py). No chroot, no
# binfmt_misc: debootstrap's first stage downloads the arm64 packages, they are unpacked with dpkg-deb,
# and qemu-aarch64-static -L <root> runs the root's python3. onnxruntime reads /proc/cpuinfo at start;
# under -L, qemu opens <root>/proc/cpuinfo instead, so an ARM-looking one is written there.
#
# Usage: tools/arm/build_root.sh [ROOT]   (default .cache/arm-root; env: DEBIAN_MIRROR, DEBIAN_SUITE, ORT_VERSION)
# Needs: qemu-user-static, debootstrap (apt-get install qemu-user-static debootstrap), network access.
set -euo pipefail
ROOT=${1:-${ARM_ROOT:-.cache/arm-root}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
PY=${PYTHON:-.venv/bin/python}
if [ -f "$ROOT/.complete" ]; then echo "arm64 root ready: $ROOT"; exit 0; fi
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[0/4] apt-get install qemu-user-static debootstrap"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      qemu-user-static debootstrap) >/dev/null || { echo "apt-get install qemu-user-static debootstrap failed" >&2; exit 3; }
  fi
fi
for tool in qemu-aarch64-static debootstrap dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install qemu-user-static debootstrap" >&2; exit 3; }
done
ORT_VERSION=${ORT_VERSION:-$($PY -c 'import onnxruntime; print(onnxruntime.__version__)')}
NUMPY_VERSION=${NUMPY_VERSION:-$($PY -c 'import numpy; print(numpy.__version__)')}
TMP="$ROOT.partial"
rm -rf "$TMP"; mkdir -p "$TMP"
echo "[1/4] debootstrap --foreign arm64 $SUITE (download + unpack of the base system)"
debootstrap --arch=arm64 --foreign --variant=minbase --include=python3 "$SUITE" "$TMP" "$MIRROR" >"$TMP.log" 2>&1 \
  || { tail -5 "$TMP.log" >&2; exit 1; }
echo "[2/4] unpacking $(ls "$TMP"/var/cache/apt/archives/*.deb | wc -l) packages with dpkg-deb (no maintainer scripts run)"
for deb in "$TMP"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$TMP"; done
PYBIN=$(ls "$TMP"/usr/bin/python3.[0-9]* | grep -E 'python3\.[0-9]+$' | head -1)
PYVER=$(basename "$PYBIN" | sed 's/python//')
echo "[3/4] aarch64 wheels for python $PYVER: onnxruntime==$ORT_VERSION numpy"
mkdir -p "$TMP/wheels" "$TMP/opt/site"
$PY -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
  --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
  --platform manylinux_2_28_aarch64 -d "$TMP/wheels" "onnxruntime==$ORT_VERSION" "numpy==$NUMPY_VERSION" \
  || $PY -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
  --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64 \
  --platform manylinux_2_28_aarch64 -d "$TMP/wheels" "onnxruntime==$ORT_VERSION" numpy
for w in "$TMP"/wheels/*.whl; do $PY -m zipfile -e "$w" "$TMP/opt/site"; done
echo "[4/4] ARM-looking /proc/cpuinfo (Cortex-A78-like) inside the root"
mkdir -p "$TMP/proc"
: > "$TMP/proc/cpuinfo"
for i in $(seq 0 $(( $(nproc) - 1 ))); do
  printf 'processor\t: %d\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd41\nCPU revision\t: 0\n\n' "$i" >> "$TMP/proc/cpuinfo"
done
rm -rf "$ROOT"; mv "$TMP" "$ROOT"; mv "$TMP.log" "$ROOT/debootstrap.log"
touch "$ROOT/.complete"
echo "arm64 root ready: $ROOT ($(du -sh "$ROOT" | cut -f1))"
