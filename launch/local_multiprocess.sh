#!/usr/bin/env bash
# Start N `blip-jax train` processes on this machine as one jax.distributed job.
#
#   launch/local_multiprocess.sh -n 2 --cpu -- --config configs/pretrain_tiny.py --workdir /tmp/run
#   launch/local_multiprocess.sh -n 4 --gpus-per-process 2 -- --config configs/pretrain.py --workdir runs/pt
#
# Each process gets the variables blip_jax.train.distributed.maybe_initialize_distributed reads:
#   JAX_COORDINATOR_ADDRESS=127.0.0.1:<port>  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
# plus its devices: --cpu gives every process its own CPU "devices" (JAX_PLATFORMS=cpu,
# --xla_force_host_platform_device_count) and gloo collectives; otherwise process i drives
# accelerators i*K .. i*K+K-1 (JAX_LOCAL_DEVICE_IDS, read by jax itself).
# Process 0's output goes to the terminal; every process also logs to $LOG_DIR/process_<i>.log.
# Ctrl-C / SIGTERM is forwarded to all processes, which save a checkpoint and exit with code 75
# (stopped early; this script then exits 75 too); rerunning the same command resumes from it.
set -euo pipefail

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: -n|--num-processes N  [--cpu] [--cpu-devices D (per process, default 1)]"
  echo "         [--gpus-per-process K (default 1)] [--port P] [--log-dir DIR]  -- <blip-jax train args>"
}

NUM=2
CPU=0
CPU_DEVICES=1
PER_PROCESS=1
PORT=""
LOG_DIR=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n|--num-processes) NUM="$2"; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --cpu-devices) CPU_DEVICES="$2"; shift 2 ;;
    --gpus-per-process) PER_PROCESS="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --log-dir) LOG_DIR="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ $# -eq 0 ]]; then
  echo "missing train arguments after --" >&2; usage >&2; exit 2
fi
if [[ -z "$PORT" ]]; then
  # A free port chosen by the kernel (a fixed one collides when two jobs share a machine).
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
LOG_DIR=${LOG_DIR:-launch_logs/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$LOG_DIR"
BLIP_JAX=${BLIP_JAX:-blip-jax}

PIDS=()
forward() {
  echo "local_multiprocess: forwarding SIG$1 to ${#PIDS[@]} processes" >&2
  for pid in "${PIDS[@]}"; do kill -s "$1" "$pid" 2>/dev/null || true; done
}
trap 'forward TERM' TERM
# Ctrl-C becomes SIGTERM for the children: a terminal's SIGINT may reach them directly too, and
# a second SIGINT makes the train loop stop at once instead of saving.
trap 'forward TERM' INT

for ((i = 0; i < NUM; i++)); do
  env_vars=(JAX_COORDINATOR_ADDRESS="127.0.0.1:$PORT" JAX_NUM_PROCESSES="$NUM" JAX_PROCESS_ID="$i")
  if [[ $CPU -eq 1 ]]; then
    env_vars+=(JAX_PLATFORMS=cpu XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$CPU_DEVICES")
  else
    ids=$(seq -s, $((i * PER_PROCESS)) $((i * PER_PROCESS + PER_PROCESS - 1)))
    env_vars+=(JAX_LOCAL_DEVICE_IDS="$ids")
  fi
  log="$LOG_DIR/process_$i.log"
  if [[ $i -eq 0 ]]; then
    env "${env_vars[@]}" "$BLIP_JAX" train "$@" > >(tee "$log") 2>&1 &
  else
    env "${env_vars[@]}" "$BLIP_JAX" train "$@" >"$log" 2>&1 &
  fi
  PIDS+=($!)
done
echo "local_multiprocess: $NUM processes, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR" >&2

status=0
for idx in "${!PIDS[@]}"; do
  # `wait` returns early when a trapped signal arrives; wait again until the process is gone.
  while true; do
    set +e
    wait "${PIDS[$idx]}"
    rc=$?
    set -e
    if ! kill -0 "${PIDS[$idx]}" 2>/dev/null; then break; fi
  done
  if [[ $rc -eq 75 ]]; then
    [[ $status -eq 0 ]] && status=75  # stopped early with a checkpoint (EXIT_PREEMPTED), not a failure
  elif [[ $rc -ne 0 ]]; then
    echo "local_multiprocess: process $idx exited with $rc (log: $LOG_DIR/process_$idx.log)" >&2
    status=$rc
  fi
done
exit $status
