#!/usr/bin/env bash
# The device checks of one GPU lease in one call (see README "Benchmarks"). Parts run in the
# order given; each writes its results to $OUT (default ./gpu_out), and one failing part does
# not stop the rest.
#   bash benchmarks/gpu_session.sh attention gen gen_stable train pretrain pretrain_stable pretrain_fresh \
#     pretrain_nocb train_b192 train_b384 numerics capfilt
set -u
OUT=$(mkdir -p "${OUT:-gpu_out}" && cd "${OUT:-gpu_out}" && pwd)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:$PWD/benchmarks:${PYTHONPATH:-}"
if ls .whl/*.whl >/dev/null 2>&1; then  # packages the device image lacks, carried as wheels
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
log() { echo "=== $(date +%T) $*"; }
log env
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,power.limit --format=csv
python3 -c "import jax, flax, jaxlib; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
train=(python3 benchmarks/train_step.py --dtype bfloat16 --skip-hf --steps 5)
gen=(python3 benchmarks/generate_vs_hf.py --device-kind gpu --dtype bfloat16)
for part in "$@"; do
  log "$part"
  case $part in
    attention) timeout 75 python3 benchmarks/gpu_attention.py --batch 96 --json "$OUT/attention.json" ;;
    train) timeout 200 "${train[@]}" --batch 96 --profile /tmp/prof --out "$OUT/train_b96.json"
           tar czf "$OUT/prof_b96.tgz" -C /tmp --exclude='*.xplane.pb' --exclude='*.trace.json.gz' prof ;;
    pretrain) timeout 150 "${train[@]}" --batch 96 --skip-caption --profile /tmp/prof --out "$OUT/pretrain_b96.json"
              tar czf "$OUT/prof_b96.tgz" -C /tmp --exclude='*.xplane.pb' --exclude='*.trace.json.gz' prof ;;
    pretrain_fresh) timeout 130 "${train[@]}" --batch 96 --skip-caption --fresh-metrics \
                      --out "$OUT/pretrain_b96_fresh_metrics.json" ;;
    pretrain_nocb) timeout 130 "${train[@]}" --batch 96 --skip-caption --command-buffers off \
                     --out "$OUT/pretrain_b96_nocb.json" ;;
    pretrain_stable) timeout 130 "${train[@]}" --batch 96 --skip-caption --command-buffer-update stable \
                       --out "$OUT/pretrain_b96_stable.json" ;;
    gen_stable) timeout 60 "${gen[@]}" --skip-hf --command-buffer-update stable --json "$OUT/gen_bf16_stable.json" ;;
    train_b192) timeout 140 "${train[@]}" --batch 192 --skip-caption --out "$OUT/train_b192.json" ;;
    train_b384) timeout 180 "${train[@]}" --batch 384 --skip-caption --out "$OUT/train_b384.json" ;;
    gen) timeout 100 "${gen[@]}" --profile /tmp/genprof --json "$OUT/gen_bf16.json" ;;
    gen_cmdbuf) XLA_FLAGS="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL" \
                  timeout 55 "${gen[@]}" --skip-hf --json "$OUT/gen_bf16_cmdbuf.json" ;;
    numerics) timeout 120 python3 benchmarks/gpu_numerics.py --json "$OUT/numerics.json" ;;
    capfilt) timeout 150 python3 benchmarks/capfilt_throughput.py --batch 64 --dtype bfloat16 \
               --json "$OUT/capfilt_bf16_b64.json" ;;
    *) echo "unknown part $part" ;;
  esac
done
log done
