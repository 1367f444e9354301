#!/usr/bin/env bash
# The GPU checks and measurements of docs/benchmarks.md ("GPU"), as one script:
#   1. the CUDA tests (tests/test_cuda.py: same maths as the CPU, pool resets, resume, every protocol);
#   2. the dsa protocol on random MNIST subsets (IPC 1/10/50; DSA's strategy and DC's MNIST strategy);
#   3. Table 1 at the cpu-small budget for MNIST and Fashion-MNIST, distilled and evaluated on the GPU;
#   4. the outer-step benchmark on the GPU.
# Usage, from the repository root of a machine with a CUDA GPU and torch:
#   FREPO_DATA_DIR=DIR SETS=DIR RESULTS=DIR bash benchmarks/gpu_session.sh
# DIR of FREPO_DATA_DIR holds mnist.npz and fashion_mnist.npz; SETS holds the random subsets made with
#   frepo subset --dataset mnist --ipc N --method random --seed 0 --out $SETS/mnist-random-ipcN.safetensors
# Each part runs under its own time limit, so one failure does not hide the others; everything lands in
# $RESULTS (the run directories without their checkpoints in $RESULTS/runs).
set -uo pipefail
: "${FREPO_DATA_DIR:?}" "${SETS:?}" "${RESULTS:?}"
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FREPO_CACHE="${FREPO_CACHE:-/tmp/frepo-cache}"
PY=${PYTHON:-python3}
FREPO=("$PY" -m frepo)
part() { echo; echo "=== $1 ($(date +%T))"; }

part "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

part "CUDA tests"
timeout 240 "$PY" -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 | grep -v "distill:" | tail -25

part "dsa protocol, random MNIST subsets"
for strategy in color_crop_cutout_flip_scale_rotate crop_scale_rotate; do
  for ipc in 1 10 50; do
    [ "$strategy" = color_crop_cutout_flip_scale_rotate ] && [ "$ipc" != 10 ] && continue
    timeout 150 "${FREPO[@]}" evaluate "$SETS/mnist-random-ipc$ipc.safetensors" --protocol dsa --models 5 \
      --dsa-strategy "$strategy" --json "$RESULTS/dsa-mnist-ipc$ipc-$strategy.json" 2>&1 | grep -v "evaluate ("
  done
done

part "Table 1, cpu-small budget, MNIST and Fashion-MNIST"
timeout 300 "${FREPO[@]}" reproduce --table 1 --budget cpu-small --datasets mnist,fashion_mnist \
  --runs-dir runs/gpu-reproduce --out "$RESULTS/reproduction-gpu.md" 2>&1 | grep -v "distill:\|evaluate (" | tail -30
mkdir -p "$RESULTS/runs" && (cd runs && tar cf - --exclude=checkpoint.pt gpu-reproduce) | tar xf - -C "$RESULTS/runs"

part "outer-step benchmark"
timeout 240 "$PY" benchmarks/bench_step.py --device cuda --warmup 10 --repeats 30 \
  --settings mnist-ipc10-b256,cifar10-ipc10-b1024-flip,cifar100-ipc1-b1024-flip,cifar100-ipc50-flip \
  --json "$RESULTS/bench_step_gpu.json"
part "done"
