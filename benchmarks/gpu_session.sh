#!/usr/bin/env bash
# A lent GPU session's work as one command, for the device tool (README
# "Prepared for a GPU"). On this machine first: bash benchmarks/gpu_prepare.sh;
# then the device call: command `bash benchmarks/gpu_session.sh`, carry
# [".whl", "carry"], timeout_s 590.
#
# Two parts, in the order the open issues need them, each under its own time
# limit so that the whole ends inside GPU_SESSION_SECONDS (default 560):
#   1. glow_cifar10:gpu trained on the carried CIFAR-10 subset for
#      GLOW_TRAIN_SECONDS (default 300), then evaluated: test bits/dim on the
#      1,000 test images at hand (issue 6's 3.6 target);
#   2. benchmarks/speed.py over the configs no GPU has timed yet, against
#      eager PyTorch (issue 5's 1.3x), as many as the time left allows: the
#      table is rewritten after each config, so a stopped run keeps its rows.
# What comes back is under $OUT (the device tool returns at most 8 files):
# env.txt, glow.log, glow_eval.json, glow_summary.json, glow_temperatures.png,
# glow_interpolations.png, speed.md, speed.log. A part that fails is reported and the next one runs.
#
# For a dry run on a CPU (the structure at smoke size, minutes):
#   OUT=/tmp/gpu_out PYTHON=python GLOW_CONFIG=configs/glow_cifar10.py:gpu,smoke \
#   GLOW_TRAIN_SECONDS=20 SPEED_CONFIGS=vae_mnist:smoke,glow_mnist:smoke \
#   SPEED_FLAGS="--steps=8 --repeats=1 --sample_batch=0 --set train.steps_per_dispatch=1" \
#   DATA_DIR=/tmp/gpu_data bash benchmarks/gpu_session.sh
set -uo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
budget="${GPU_SESSION_SECONDS:-560}"
out="${OUT:-/tmp/gpu_out}"
python="${PYTHON:-python3}"
data_dir="${DATA_DIR:-/tmp/data}"
glow_config="${GLOW_CONFIG:-configs/glow_cifar10.py:gpu}"
glow_train_seconds="${GLOW_TRAIN_SECONDS:-300}"
glow_workdir="${GLOW_WORKDIR:-/tmp/glow_gpu}"
# The configs without a GPU timing (README "Where the speed targets stand"),
# cheapest to compile first: the flows at 4-8 steps per dispatch compile
# longest (glow_mnist's compile outlasted the last H200 session).
speed_configs="${SPEED_CONFIGS:-classifier_mnist,classifier_cifar10,sngan_cifar10,cgan_cifar10,acgan_cifar10,vae_cifar10,cvae_cifar10,ddpm_cifar10,vae_mnist:ar,vae_cifar10:ar,realnvp_cifar10,glow_cifar10,glow_mnist}"
# No sampling table: the twins of the :ar decoders sample pixel by pixel in an
# eager Python loop, minutes on a GPU that the train steps need more.
speed_flags="${SPEED_FLAGS:---steps=48 --repeats=3 --sample_batch=0}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1

seconds_left() { echo $((budget - (SECONDS - start))); }
say() { echo "gpu_session [$((SECONDS - start)) s]: $*"; }

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --upgrade --target /tmp/site .whl/*.whl || { say "wheel install failed"; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1
  "$python" -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices()); print('flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} >"$out/env.txt" 2>&1
cat "$out/env.txt"

say "part 1: $glow_config for $glow_train_seconds s of training"
if [ ! -d "$data_dir/cifar10" ]; then
  "$python" -m jaxgen.data_pack unpack --packed=carry/cifar10 --data_dir="$data_dir" \
    || say "unpacking carry/cifar10 failed (run benchmarks/gpu_prepare.sh here first)"
fi
# Compile, the EMA evaluation and the views after training: 200 s is ample
# for them on an H200 by the scanned steps' compile times (README); the outer
# limit only guards the speed part's share. run.py checkpoints on SIGTERM.
glow_limit=$((glow_train_seconds + 200))
rm -rf "$glow_workdir"
JAXGEN_DATA_DIR="$data_dir" timeout --signal=TERM --kill-after=20 "$glow_limit" \
  "$python" run.py --config="$glow_config" --workdir="$glow_workdir" \
  --config.train.max_seconds="$glow_train_seconds" \
  --config.eval.num_samples=0 --config.eval.timing_samples=0 >"$out/glow.log" 2>&1
glow_rc=$?
say "part 1 exit status $glow_rc"
for name in eval summary; do
  [ -f "$glow_workdir/$name.json" ] && cp "$glow_workdir/$name.json" "$out/glow_$name.json"
done
for view in temperatures interpolations; do
  last=$(ls "$glow_workdir/samples/${view}"_step_*.png 2>/dev/null | tail -1)
  [ -n "$last" ] && cp "$last" "$out/glow_$view.png"
done
tail -n 5 "$out/glow.log"

speed_seconds=$(( $(seconds_left) - 10 ))
if [ "$speed_seconds" -lt 60 ]; then
  say "part 2 skipped: $speed_seconds s left"
else
  say "part 2: speed.py for $speed_seconds s over $speed_configs"
  # shellcheck disable=SC2086  # the flags are words on purpose
  timeout --signal=TERM --kill-after=10 "$speed_seconds" \
    "$python" benchmarks/speed.py --configs="$speed_configs" $speed_flags \
    --out="$out/speed.md" >"$out/speed.log" 2>&1
  say "part 2 exit status $? (124: stopped by its time limit; speed.md holds the configs it finished)"
fi

say "done"
if [ -f "$out/glow_eval.json" ]; then
  "$python" -c "
import json, sys
e = json.load(open(sys.argv[1]))
print('glow test metrics at step', e.get('step'), {k: v for k, v in e['metrics'].items() if 'bpd' in k})
" "$out/glow_eval.json"
fi
[ -f "$out/speed.md" ] && grep '^|' "$out/speed.md" | cut -c1-400
exit 0
