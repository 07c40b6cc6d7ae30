#!/usr/bin/env bash
# Prepares, on this (CPU) machine, what benchmarks/gpu_session.sh needs on a
# lent GPU machine, which reaches no network and runs its image's own Python
# 3.12, JAX and PyTorch (README "Prepared for a GPU"):
#   .whl/          jaxgen's pinned flax, optax, orbax-checkpoint and
#                  ml-collections (+ importlib_resources, which etils' epath
#                  may import) as wheels for that Python; every other package
#                  they need is in the machine's image;
#   carry/cifar10  the first NUM_TRAIN CIFAR-10 training images and the test
#                  images at hand, packed small (python -m jaxgen.data_pack).
# Both are git-ignored and travel with the device tool's `carry`; the working
# tree with them must stay under its 64 MiB, which this script checks.
#
#   bash benchmarks/gpu_prepare.sh [DATA_DIR]     # default ../shared/data
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir="${1:-../shared/data}"
num_train="${NUM_TRAIN:-30000}"
python="${PYTHON:-python}"
limit_bytes=$((64 * 1024 * 1024))

rm -rf .whl carry/cifar10
mkdir -p .whl carry
wheel_pins=()
for name in flax optax orbax-checkpoint ml-collections importlib_resources; do
  pin=$(grep -i -E "^${name}==" requirements.txt || true)
  if [ -z "$pin" ]; then
    echo "gpu_prepare: requirements.txt pins no version of $name" >&2
    exit 1
  fi
  wheel_pins+=("$pin")
done
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${wheel_pins[@]}"
PYTHONPATH=. "$python" -m jaxgen.data_pack pack --data_dir="$data_dir" \
  --num_train="$num_train" --out=carry/cifar10

tree_bytes=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb | tail -1 | cut -f1)
carried_bytes=$(du -cb .whl carry | tail -1 | cut -f1)
total=$((tree_bytes + carried_bytes))
echo "gpu_prepare: working tree $((tree_bytes / 1024)) KiB + .whl and carry" \
  "$((carried_bytes / 1024)) KiB = $((total / 1024)) KiB of the $((limit_bytes / 1024)) KiB a device call takes"
if [ "$total" -gt "$limit_bytes" ]; then
  echo "gpu_prepare: over the device tool's limit; rerun with a smaller NUM_TRAIN" >&2
  exit 1
fi
echo "gpu_prepare: ready. Device call: command 'bash benchmarks/gpu_session.sh'," \
  "carry [\".whl\", \"carry\"], timeout_s 590"
