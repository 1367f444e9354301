#!/usr/bin/env bash
# The GPU checks and measurements of docs/benchmarks.md ("GPU"), as one script:
#   1. tests: the CUDA tests (tests/test_cuda.py: same maths as the CPU, pool resets, resume, every protocol),
#      then the command line's main job on the GPU (frepo distill digits IPC 10, 30 steps; frepo evaluate);
#   2. dsa: the dsa protocol on random MNIST subsets (IPC 1/10/50; DSA's strategy and DC's MNIST strategy);
#      dsa-subsets: DC's MNIST strategy on four more random subsets (seeds 1-4) at IPC 1 and 10;
#   3. reproduce: Table 1 at the BUDGET budget (cpu-small, or gpu-small) for MNIST and Fashion-MNIST,
#      distilled and evaluated here (REPRODUCE_LIMIT seconds, default 300); convs: the pool network's
#      blocks timed one by one (precision × layout × cuDNN's choice);
#   4. bench: the outer-step benchmark (deterministic kernels, the default); bench-nondet: two settings
#      with cuDNN's default (non-deterministic) algorithms, for the cost of determinism.
#   Issue 19 (the step near the hardware), PARTS="tests roofline solve precision eval long":
#   5. roofline: the step eager against --compile graph (one CUDA graph per pool model, paired, --vs), in
#      float32/TF32 and with both feature passes in bf16, with the TF32 and bf16 matmul peaks of the same
#      run and the GPU's busy time per step (ROOFLINE_SETTINGS, default MNIST IPC 10, CIFAR-10 IPC 10 and
#      CIFAR-100 IPC 50); solve: the float64 kernel solve of CIFAR-100 IPC 50's support set, dual vs primal;
#   6. precision: the meta-gradient under bf16 against float32 (bench_precision.py, MNIST IPC 10);
#   7. eval: 5 evaluation networks one after the other against stacked (bench_eval.py, MNIST, 10/100/500),
#      with the costliest kernels of 20 steps of each;
#   8. cudagraphs: the step eager against --compile cudagraphs, CIFAR-10 IPC 10 flip only (paired, --vs);
#   9. long: an MNIST IPC 10 distillation of LONG_STEPS steps (default 20000) with STEP_FLAGS (e.g.
#      "--compile cudagraphs"), then a 5-model evaluation (a row of docs/reproduction.md, with its budget);
#  10. kernels: the costliest GPU kernels of 10 steps, eager and under --compile graph, MNIST and CIFAR-10
#      IPC 10 (launches and busy µs per step: where a step's milliseconds go, kernel by kernel);
#  11. init: a pool reset's weight draw (host) and copies, frepo's truncated normal against torch's
#      trunc_normal_ (bench_init.py; a reset comes about every 100 steps, and its host time is a step's).
# Usage, from the repository root of a machine with a CUDA GPU and torch:
#   RESULTS=DIR [FREPO_DATA_DIR=DIR] [SETS=DIR] [PARTS="tests dsa ..."] [SESSION_LIMIT=S] bash benchmarks/gpu_session.sh
# FREPO_DATA_DIR holds mnist.npz and fashion_mnist.npz (reproduce, long, dsa); SETS holds the random subsets (dsa)
# made with
#   frepo subset --dataset mnist --ipc N --method random --seed S --out $SETS/mnist-random-ipcN[-seedS].safetensors
# (no -seedS suffix for seed 0). PARTS defaults to "tests dsa reproduce bench"; they run in the order given.
# Each part runs under its own time limit, cut to what SESSION_LIMIT (the seconds this call may take in all,
# default: no limit) leaves, so one failure or overrun does not hide the others; a part with under 20 s left is
# skipped. Everything lands in $RESULTS as it is produced: session.log (this output, each part's exit code and
# seconds), the raw JSON of each part, written after each setting, and the run records (a call returns at most
# 8 files: the planned calls below write 6 and 4).
# A device session's two calls, with mnist.npz and fashion_mnist.npz carried in .gpudata (../shared does not travel):
#   first (<= 5 min): PARTS="tests eval roofline init" ROOFLINE_SETTINGS=mnist-ipc10-b256,cifar10-ipc10-b1024-flip
#     SESSION_LIMIT=280 FREPO_DATA_DIR=.gpudata RESULTS=$OUT bash benchmarks/gpu_session.sh
#   last (<= 7 min): PARTS="long reproduce" BUDGET=gpu-small REPRODUCE_LIMIT=250 LONG_STEPS=8000 SESSION_LIMIT=400
#     FREPO_DATA_DIR=.gpudata RESULTS=$OUT bash benchmarks/gpu_session.sh
# (Table 1 at gpu-small took about 4 minutes of an H200, the tests 1, the 8000 MNIST steps and their evaluation 2:
# long goes first, as reproduce keeps each row it finished when cut, and long's accuracy comes only at its end.
# In the other order long's evaluation had about 37 s of the session left for the 35 it takes.)
set -uo pipefail
: "${RESULTS:?}"
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)  # absolute: the reproduce part writes into it from another folder
exec > >(tee -a "$RESULTS/session.log") 2>&1  # everything said reaches $RESULTS, even from a part cut short
TEE=$!
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export FREPO_CACHE="${FREPO_CACHE:-/tmp/frepo-cache}"
[ -n "${FREPO_DATA_DIR:-}" ] && FREPO_DATA_DIR=$(cd "$FREPO_DATA_DIR" && pwd) && export FREPO_DATA_DIR
PY=${PYTHON:-python3}
FREPO=("$PY" -m frepo)
PARTS=${PARTS:-tests dsa reproduce bench}
SESSION_LIMIT=${SESSION_LIMIT:-0}
# A part's time limit: its own (the argument), or what the session has left less 15 s, whichever is smaller.
left() {
  local want=$1 rest
  if (( SESSION_LIMIT > 0 )); then
    rest=$(( SESSION_LIMIT - SECONDS - 15 ))
    (( rest < want )) && want=$rest
  fi
  echo "$want"
}
# Each command of a part: under its own limit cut to what the session has left (`timeout 0` would mean none),
# skipped under 5 s; killed 20 s after its SIGTERM (frepo stops after the current step on SIGTERM).
limited() {
  local t
  t=$(left "$1")
  shift
  (( t < 5 )) && { echo "skipped, the session's time is spent: $*"; return 124; }
  timeout -k 20 "$t" "$@"
}
# Progress bars out; unbuffered, so a cut part keeps its lines; all lines filtered out is no failure.
quiet() { grep --line-buffered -v "$@" || [ $? -eq 1 ]; }
need_data() {
  local name
  for name in "$@"; do
    [ -f "${FREPO_DATA_DIR:-/nonexistent}/$name.npz" ] || { echo "no $name.npz in FREPO_DATA_DIR (${FREPO_DATA_DIR:-unset})"; return 1; }
  done
}

part_tests() {
  echo "--- the CUDA tests"
  local timeout_flag=()
  "$PY" -c "import pytest_timeout" 2>/dev/null && timeout_flag=(--timeout 90)
  limited 200 "$PY" -m pytest -q -s -p no:cacheprovider -rfE -n 4 ${timeout_flag[@]+"${timeout_flag[@]}"} tests/test_cuda.py 2>&1 \
    | quiet "distill:"
  local rc=$?
  echo "--- the main job on the GPU"
  rm -rf /tmp/frepo-main-job
  limited 90 "${FREPO[@]}" distill --dataset digits --ipc 10 --steps 30 --device cuda --out /tmp/frepo-main-job \
    2>&1 | quiet "distill:" || rc=1
  limited 60 "${FREPO[@]}" evaluate /tmp/frepo-main-job/distilled.safetensors --models 2 --steps 100 \
    --device cuda --json "$RESULTS/main-job-eval.json" 2>&1 | quiet "evaluate (" || rc=1
  ls /tmp/frepo-main-job
  return $rc
}

part_cudagraphs() {  # eager against --compile cudagraphs (paired)
  limited 150 "$PY" benchmarks/bench_step.py --device cuda --warmup 10 --repeats 30 --set compile=off \
    --vs compile=cudagraphs --settings cifar10-ipc10-b1024-flip --json "$RESULTS/cudagraphs-gpu.json"
}

part_dsa() {
  [ -n "${SETS:-}" ] || { echo "the dsa part needs SETS"; return 1; }
  need_data mnist || return 1
  local rc=0 strategy ipc
  for strategy in color_crop_cutout_flip_scale_rotate crop_scale_rotate; do
    for ipc in 1 10 50; do
      [ "$strategy" = color_crop_cutout_flip_scale_rotate ] && [ "$ipc" != 10 ] && continue
      limited 150 "${FREPO[@]}" evaluate "$SETS/mnist-random-ipc$ipc.safetensors" --protocol dsa --models 5 \
        --dsa-strategy "$strategy" --no-download --json "$RESULTS/dsa-mnist-ipc$ipc-$strategy.json" 2>&1 \
        | quiet "evaluate (" || rc=1
    done
  done
  return $rc
}

part_dsa-subsets() {  # DC's MNIST strategy, random subsets of seeds 1-4
  [ -n "${SETS:-}" ] || { echo "the dsa-subsets part needs SETS"; return 1; }
  need_data mnist || return 1
  limited 200 "$PY" - "$SETS" "$RESULTS" <<'PYEOF'
import sys
from frepo import evaluate
from frepo.eval.results import write_json

sets, results = sys.argv[1:]
for ipc in (1, 10):
    for seed in (1, 2, 3, 4):
        name = f"mnist-random-ipc{ipc}-seed{seed}"
        r = evaluate(f"{sets}/{name}.safetensors", models=2, protocol="dsa", dsa_strategy="crop_scale_rotate", progress=False)
        write_json([r], f"{results}/dsa-{name}-crop_scale_rotate.json")
        print(name, r.summary(), flush=True)
PYEOF
}

part_reproduce() {  # Table 1 at the BUDGET budget, MNIST and Fashion-MNIST
  need_data mnist fashion_mnist || return 1
  echo "budget ${BUDGET:=cpu-small}"
  # The table is rewritten after every row, so a run cut by its limit keeps the rows it finished.
  local runs="runs/gpu-reproduce-$BUDGET"
  limited "${REPRODUCE_LIMIT:-300}" "${FREPO[@]}" reproduce --table 1 --budget "$BUDGET" \
    --datasets mnist,fashion_mnist --no-download --runs-dir "$runs" --out "$runs/reproduction-gpu-$BUDGET.md" 2>&1 \
    | sed -u 's/\r/\n/g' | quiet "distill:\|evaluate (\|train:\|^ *$"
  local rc=$?
  cat "$runs/reproduction-gpu-$BUDGET.md"
  # One file back (a call returns 8 at most): the table, its JSON and plot, and the runs' records (no
  # checkpoints or snapshots).
  (cd runs && tar czf "$RESULTS/reproduce-$BUDGET.tgz" --exclude=checkpoint.pt --exclude=images \
    --exclude=distilled.png --exclude=best.png "gpu-reproduce-$BUDGET")
  return $rc
}

part_convs() {  # the network's blocks one by one (where a feature pass loses the peak)
  limited 90 "$PY" benchmarks/bench_convs.py --device cuda --batch 512 --repeats 20 --json "$RESULTS/convs-gpu.json"
}

part_bench() {  # the outer step at the defaults a user gets (--compile auto: graph on one GPU)
  limited 240 "$PY" benchmarks/bench_step.py --device cuda --warmup 10 --repeats 30 \
    --json "$RESULTS/bench_step_gpu.json" \
    --settings mnist-ipc10-b256,cifar10-ipc10-b1024-flip,cifar100-ipc1-b1024-flip,cifar100-ipc50-flip
}

part_bench-nondet() {  # cuDNN's default (non-deterministic) algorithms, for the cost of determinism
  limited 120 "$PY" benchmarks/bench_step.py --device cuda --warmup 10 --repeats 30 --set deterministic=false \
    --settings cifar10-ipc10-b1024-flip,cifar100-ipc50-flip --json "$RESULTS/bench_step_gpu_nondet.json"
}

part_roofline() {  # eager (--compile off) against --compile graph, paired, 10 queued steps a sample as a run queues
  # them; float32/TF32, then bf16 feature passes
  local rc=0 flags
  for flags in "" "--set precision=bf16 --set support_precision=bf16"; do
    # shellcheck disable=SC2086
    limited 200 "$PY" benchmarks/bench_step.py --device cuda --warmup 30 --repeats 30 --block 10 --set compile=off \
      --vs compile=graph $flags \
      --settings "${ROOFLINE_SETTINGS:-mnist-ipc10-b256,cifar10-ipc10-b1024-flip,cifar100-ipc50-flip}" \
      --json "$RESULTS/roofline-gpu${flags:+-bf16}.json" || rc=1
  done
  return $rc
}

part_init() {  # a pool reset's weight draw on the host and its copies to the GPU
  limited 60 "$PY" benchmarks/bench_init.py --device cuda --json "$RESULTS/bench_init_gpu.json"
}

part_kernels() {  # the costliest kernels of 10 steps, eager and graphed
  local rc=0 mode
  for mode in off graph; do
    limited 120 "$PY" benchmarks/bench_step.py --device cuda --warmup 10 --repeats 10 --kernels 25 \
      --set compile=$mode --settings mnist-ipc10-b256,cifar10-ipc10-b1024-flip --json "$RESULTS/kernels-gpu-$mode.json" \
      || rc=1
  done
  return $rc
}

part_solve() {  # the float64 kernel solve of 10 000 support images, dual vs primal
  limited 90 "$PY" benchmarks/bench_solve.py --device cuda --n 10000 --d 8192 --classes 100 \
    --json "$RESULTS/solve-gpu.json"
}

part_precision() {  # the meta-gradient under bf16 against float32
  limited 120 "$PY" benchmarks/bench_precision.py --device cuda --dataset mnist --ipc 10 --batch 256 \
    --warm-steps 100 --models 5 --json "$RESULTS/precision-gpu.json"
}

part_eval() {  # 5 evaluation networks: sequential vs stacked vs streams
  need_data mnist || return 1
  limited 210 "$PY" benchmarks/bench_eval.py --device cuda --dataset mnist --sizes 10,100,500 --steps 300 \
    --kernels 15 --json "$RESULTS/bench_eval_gpu.json"
}

part_long() {  # MNIST IPC 10, LONG_STEPS steps, then 5 evaluation networks
  need_data mnist || return 1
  echo "${LONG_STEPS:=20000} steps"
  # Pick LONG_STEPS from the roofline's ms/step and the minutes left; a run cut by the time limit
  # checkpoints and resumes with the same command (runs/ stays on a warm machine between calls). One folder
  # per setting: in one folder another LONG_STEPS was refused (steps change only with --resume-with-changes),
  # and the same one found "already complete" and evaluated the set of an earlier call.
  local out="runs/gpu-long-$LONG_STEPS$(printf '%s' "${STEP_FLAGS:-}" | tr -cs 'a-zA-Z0-9' '-')"
  # shellcheck disable=SC2086
  limited 300 "${FREPO[@]}" distill --dataset mnist --ipc 10 --device cuda --steps "$LONG_STEPS" \
    --no-download --out "$out" ${STEP_FLAGS:-} 2>&1 | quiet "distill:"
  local rc=$?
  # the run's metrics come back even when the time limit cut it (the machine and runs/ go with the session)
  cp "$out/metrics.jsonl" "$RESULTS/long-metrics.jsonl" 2>/dev/null
  [ $rc -eq 0 ] || return $rc
  limited 150 "${FREPO[@]}" evaluate "$out/distilled.safetensors" --models 5 --device cuda \
    --json "$RESULTS/long-mnist-ipc10.json" 2>&1 | quiet "evaluate ("
}

echo "=== machine ($(date +%T)), parts: $PARTS, session limit: ${SESSION_LIMIT}s"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
for part in $PARTS; do
  if ! declare -F "part_$part" > /dev/null; then
    echo "=== $part: no such part"
    continue
  fi
  if (( $(left 1000000) < 20 )); then
    echo "=== $part: skipped, under 20 s of the session left"
    continue
  fi
  echo; echo "=== $part ($(date +%T))"
  began=$SECONDS
  "part_$part"
  echo "=== $part: exit code $?, $(( SECONDS - began )) s"
done
echo "=== done ($(date +%T))"
exec >&- 2>&-
wait "$TEE"  # session.log whole before the call's files are collected
