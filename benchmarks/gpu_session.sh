#!/usr/bin/env bash
# One GPU session, in the order of what only a GPU can do: train the demo prior
# (configs/demo.yml) for a fixed wall time, time the full-size UNets
# (benchmarks/throughput.py), then run the EquS ablation with the new weights.
# Usage: bash benchmarks/gpu_session.sh [OUT] [TRAIN_MINUTES]
# Needs exp/datasets/demo_train and exp/datasets/demo (runners.demo_data.materialise_demo_sets()).
# DEVICE, BANK, BATCH, TP_ARGS and AB_ARGS override the GPU settings (a CPU dry run uses them);
# PHASES picks what runs (default "train throughput ablation"; "speed" times the network
# variants at batch 8: NCHW with the reference loop, --attention sdpa, and sdpa + CUDA graphs,
# then benchmarks/sampler_overhead.py on the GPU). AB_TIMEOUT (default 240 s) bounds the
# ablation; it writes its tables after every task, so a cut-off run keeps the tasks it finished.
# Training starts afresh in a new temporary folder on every call; when it fails, the ablation
# is skipped rather than run on the committed weights. It exports runners.train's default EMA
# (started from zero, bias-corrected); the committed prior's was started from the init
# (--ema_from init: README, "The demo prior"), whose share fades as 0.999^steps (2.7% at 3600).
#
# The next session's plan (15 device-minutes; one call runs at most 10 minutes; carry exp/datasets):
#   call 1: STEPS=3600 PHASES="train ablation" AB_TIMEOUT=60 AB_ARGS="--steps 100 --seeds 0 1 --tasks inpainting
#           sr_bicubic --rows DDNM DDNM-EquS+" bash benchmarks/gpu_session.sh $OUT 7.5   (about 8.5 minutes)
#           (a longer, cosine-annealed demo prior, then the two tasks of issue 6's classical-row test)
#   call 2: PHASES="ablation speed" AB_ARGS="--steps 100 --seeds 0 1" bash benchmarks/gpu_session.sh $OUT
#           after copying call 1's $OUT/demo_ema.pt over weights/demo_ema.pt here (the script itself never
#           writes weights/); the full ablation, then issue 7's grid
OUT=${1:-${OUT:-exp/gpu_session}}
MINUTES=${2:-3.6}
DEVICE=${DEVICE:-cuda}
BANK=${BANK:-80000}
BATCH=${BATCH:-256}
TP_ARGS=${TP_ARGS:-}
AB_ARGS=${AB_ARGS:---steps 100 --seeds 0 1 2}
AB_TIMEOUT=${AB_TIMEOUT:-240}
PHASES=${PHASES:-train throughput ablation}
# STEPS: train for this many steps with a cosine learning-rate decay (the minutes stay a
# safety stop; 8 steps/s at batch 256 on an H100); unset: constant rate for the minutes
if [ -n "${STEPS:-}" ]; then TRAIN_LEN="--steps $STEPS --lr_decay cosine"; else TRAIN_LEN="--steps 1000000"; fi
has() { case " $PHASES " in *" $1 "*) return 0;; esac; return 1; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
LOG="$OUT/session.log"
{
  date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  python3 -c "import torch, skimage; print('torch', torch.__version__, 'skimage', skimage.__version__)"
} >"$LOG" 2>&1

TRAIN_RC=0
if has train; then
echo "== train ($MINUTES min)" >>"$LOG"
TRAIN_DIR=$(mktemp -d)
t0=$(date +%s)
timeout $(python3 -c "print(int(60 * $MINUTES + 90))") \
  python3 -m runners.train --config demo.yml --data exp/datasets/demo_train --out "$TRAIN_DIR" \
    $TRAIN_LEN --minutes "$MINUTES" --batch_size "$BATCH" --lr 4e-4 --warmup 200 --ema 0.999 \
    --amp bf16 --channels_last --crop_bank "$BANK" --seed 0 --save_every 1000 --log_every 50 \
    --export "$OUT/demo_ema.pt" --device "$DEVICE" >"$OUT/train.log" 2>&1
TRAIN_RC=$?
echo "train rc=$TRAIN_RC wall=$(( $(date +%s) - t0 )) s" >>"$LOG"
python3 -c "import torch; s = torch.load('$TRAIN_DIR/train_state.pt', weights_only=True); l = s['losses']; \
n = min(200, len(l)); print('steps', s['step'], 'mean loss, first/last', n, 'steps:', sum(l[:n]) / n, sum(l[-n:]) / n)" >>"$LOG" 2>&1
rm -rf "$TRAIN_DIR"   # the weights are in $OUT/demo_ema.pt; the optimiser state (~77 MB) is not kept
fi

if has throughput; then
echo "== throughput" >>"$LOG"
timeout 190 python3 benchmarks/throughput.py --device "$DEVICE" --reference ddnm $TP_ARGS --json "$OUT/throughput.json" >>"$LOG" 2>&1
echo "throughput rc=$?" >>"$LOG"
fi

if has speed; then
echo "== speed variants (batch 8, DDNM)" >>"$LOG"
SP="--device $DEVICE --batches 8 --methods ddnm $TP_ARGS"
timeout 150 python3 benchmarks/throughput.py $SP --reference ddnm --json "$OUT/speed_nchw.json" >>"$LOG" 2>&1
echo "speed nchw rc=$?" >>"$LOG"
timeout 90 python3 benchmarks/throughput.py $SP --reference none --attention sdpa --json "$OUT/speed_sdpa.json" >>"$LOG" 2>&1
echo "speed sdpa rc=$?" >>"$LOG"
timeout 240 python3 benchmarks/throughput.py $SP --reference none --attention sdpa --compile --compile_mode reduce-overhead \
  --json "$OUT/speed_sdpa_graphs.json" >>"$LOG" 2>&1
echo "speed sdpa+graphs rc=$?" >>"$LOG"
echo "== sampler overhead on the GPU (zero-cost denoiser; noise draws are cheap there)" >>"$LOG"
timeout 60 python3 benchmarks/sampler_overhead.py --device "$DEVICE" --skip_unet >>"$LOG" 2>&1
fi

if has ablation; then
if [ "$TRAIN_RC" -ne 0 ]; then
  echo "== ablation skipped: training failed (rc=$TRAIN_RC); see $OUT/train.log" >>"$LOG"
else
  echo "== ablation (at most $AB_TIMEOUT s)" >>"$LOG"
  # the new prior by --ckpt: the committed weights/demo_ema.pt is never overwritten by a session
  CKPT=""; [ -f "$OUT/demo_ema.pt" ] && CKPT="--ckpt $OUT/demo_ema.pt"
  timeout "$AB_TIMEOUT" python3 -m runners.ablation --device "$DEVICE" $AB_ARGS $CKPT --out "$OUT/ablation" >>"$LOG" 2>&1
  echo "ablation rc=$?" >>"$LOG"
fi
fi
date -u >>"$LOG"
