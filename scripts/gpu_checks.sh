#!/usr/bin/env bash
# Every GPU check in one run, for a machine with a CUDA GPU (results go into the README's GPU sections):
#   1. tests/test_gpu.py: simulator GPU == CPU, replay on the device, training + resume on the GPU, 1-GPU DDP, MTL
#   2. scripts/bench_envs.py on the GPU: driving env steps/s up to 262,144 parallel envs
#   3. end-to-end lane_keep_dqn on the GPU (envs, replay, updates all on the device): env steps/s, updates/s,
#      final normalized score; and a wide throughput config (1,024 envs, batch 2,048)
#   4. scripts/bench_dqn.py --device cuda: mtdqn vs SB3 vs bare torch on CartPole-v1, all on the GPU
#   5. scripts/bench_atari.py --device cuda: Atari Pong throughput, mtdqn vs SB3 (needs ale-py + OpenCV: .[atari];
#      skipped without them)
# (tests/test_gpu.py includes the conv encoder on MinAtar, since 2026-11-30, and 16-mixed clipping with true
# gradients, since 2026-12-02: neither run on a GPU yet)
# Usage: OUT=gpu_out bash scripts/gpu_checks.sh   (a .whl/ folder of wheels, if present, is installed first, for
# machines without network that lack hydra-core/gymnasium/stable-baselines3)
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export WANDB_MODE=disabled PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc;
  python3 -c "import torch, pytorch_lightning as pl; print('torch', torch.__version__, 'lightning', pl.__version__)"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS CMD...: run with a time cap, keep the log, show its tail
  local name=$1 limit=$2; shift 2
  echo "== $name (cap ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  echo "== $name rc=$? in $((SECONDS - t0))s"
  tail -n 22 "$OUT/$name.log"
}

step tests 180 python3 -m pytest -q -p no:cacheprovider -x tests/test_gpu.py
step envs 70 python3 scripts/bench_envs.py --device cuda --counts 1024 4096 65536 262144 --steps 100 --repeats 3 \
  --threads 1 --no-highway --no-cartpole
step train 80 python3 scripts/bench_scaling.py --accelerator gpu --devices 1 --repeats 1 --preset lane_keep_dqn \
  --env-steps 200000
step train_wide 80 python3 scripts/bench_scaling.py --accelerator gpu --devices 1 --repeats 1 --preset lane_keep_dqn \
  --env-steps 2000000 -- data.num_envs=1024 data.env_steps_per_round=32768 data.batch_size=2048 \
  data.replay_ratio=0.0078125 replay.capacity=1000000 exploration.duration=400000 data.learning_starts=32768
step dqn 190 python3 scripts/bench_dqn.py --device cuda --seeds 0 1 2 --skip-fast --out "$OUT/bench_dqn_gpu.json"
if python3 -c "import ale_py, cv2" 2>/dev/null; then
  step atari 200 python3 scripts/bench_atari.py --device cuda --seeds 0 1 2 --out "$OUT/bench_atari_gpu.json"
else
  echo "== atari skipped: ale_py / cv2 not installed (.[atari])"
fi
