#!/usr/bin/env bash
# Trains the shipped models (models/weights/) with train.py, exactly as the README's model card says.
# One main run at a middle rate, then each other rate point fine-tuned from its best checkpoint.
# Usage: bash tools/train_shipped.sh RUNS_DIR [MAIN_EPOCHS] [FINETUNE_EPOCHS]
#        (set SKIP_MAIN=1 to only fine-tune from an existing RUNS_DIR/main run)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: train_shipped.sh RUNS_DIR [MAIN_EPOCHS] [FINETUNE_EPOCHS]}
MAIN_EPOCHS=${2:-18}
FT_EPOCHS=${3:-1}
MAIN_LAMBDA=0.013
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
COMMON=(-d "$RUNS/data" --model-config small --batch-size 8 --test-batch-size 8 --patch-size 64 64
        --augment --repeat 32 --lr-schedule cosine --decoder-clamp -n 1 --save-every-steps 50)
if [ -z "${SKIP_MAIN:-}" ]; then
    python tools/skimage_photos.py --out "$RUNS/data"
    python -u train.py "${COMMON[@]}" --lambda $MAIN_LAMBDA -lr 1e-3 --epochs "$MAIN_EPOCHS" \
        --save_path "$RUNS/main" --max-minutes 75
fi
for L in 0.0025 0.006 0.03 0.08; do
    python -u train.py "${COMMON[@]}" --lambda $L -lr 3e-4 --epochs "$FT_EPOCHS" \
        --checkpoint "$RUNS/main/$MAIN_LAMBDA/checkpoint_best.pth.tar" --no-continue_train \
        --save_path "$RUNS/finetune" --max-minutes 15
done
