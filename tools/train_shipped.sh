#!/usr/bin/env bash
# Trains the shipped models (models/weights/) with train.py, exactly as the model card (docs/shipped-models.md) says:
# one main run at a middle rate (λ 0.013), then each other rate point fine-tuned for one epoch from the
# main run's best checkpoint. Then: python tools/ship_weights.py <the five checkpoints, lowest rate first>.
# Usage: bash tools/train_shipped.sh RUNS_DIR       (SKIP_MAIN=1: only the fine-tunes)
# Rounds 2-5 (ROUND2=1 … ROUND5=1, each with SKIP_MAIN=1 after the first) build on each other.
# Round 2 (ROUND2=1 runs it instead of round 1's fine-tunes) continues round 1's main run with its optimizer and
# schedule to epoch 30, then each other rate point from that run's end (optimizer state kept) at its own λ.
# Round 6 (ROUND6=1 SKIP_MAIN=1, from the shipped files of round 5) is the first on the wider data of
# tools/training_data.py with --colour-augment. Rounds 7 and 8 (ROUND7=1 / ROUND8=1 SKIP_MAIN=1, each after the one
# before) continue it; then the entropy stage (ENTROPY_STAGE=1 SKIP_MAIN=1) on round 8's files gives every shipped
# file (its block ends with the ship command). VARIABLE_RATE=1 SKIP_MAIN=1 trains the variable-rate model icwem-small-vr.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:?usage: train_shipped.sh RUNS_DIR}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
MAIN=$RUNS/main/0.013/checkpoint_best.pth.tar
COMMON=(-d "$RUNS/data" --model-config small --batch-size 8 --test-batch-size 8 --patch-size 64 64
        --augment --repeat 32 --lr-schedule cosine --decoder-clamp -n 1 --save-every-steps 50)
if [ -z "${SKIP_MAIN:-}" ]; then
    python tools/skimage_photos.py --out "$RUNS/data"
    python -u train.py "${COMMON[@]}" --lambda 0.013 -lr 1e-3 --epochs 18 --save_path "$RUNS/main" --max-minutes 75
fi
# The lowest rate point was fine-tuned at 3e-4; at that rate the higher points lost 2 dB to the main
# model (fresh Adam steps undo the end of its cosine schedule), so they use 1e-4.
if [ -z "${ROUND2:-}${ROUND3:-}${ROUND4:-}${ROUND5:-}${ROUND6:-}${ROUND7:-}${ROUND8:-}${ENTROPY_STAGE:-}${VARIABLE_RATE:-}" ]; then  # round 1 only
python -u train.py "${COMMON[@]}" --lambda 0.0025 -lr 3e-4 --epochs 1 --checkpoint "$MAIN" --no-continue_train \
    --save_path "$RUNS/finetune" --max-minutes 15
for L in 0.006 0.03 0.08; do
    python -u train.py "${COMMON[@]}" --lambda $L -lr 1e-4 --epochs 1 --checkpoint "$MAIN" --no-continue_train \
        --save_path "$RUNS/finetune" --max-minutes 15
done
fi

if [ -n "${ROUND2:-}" ]; then
    # The cosine factor follows --epochs, so continuing a finished 18-epoch run with --epochs 30 restarts at
    # lr 3e-4 (epoch 19) and decays to 1e-5; the fine-tunes (--epochs 40) go from 1.6e-4 to 1e-5. A continued
    # run keeps the main run's best loss (measured at λ 0.013), so checkpoint_latest is each run's result.
    python -u train.py "${COMMON[@]}" --lambda 0.013 -lr 1e-3 --epochs 30 --checkpoint "$MAIN" --continue_train \
        --save_path "$RUNS/round2/main" --max-minutes 105
    for L in 0.0008 0.15 0.004 0.045; do
        python -u train.py "${COMMON[@]}" --lambda $L -lr 1e-3 --epochs 40 --continue_train \
            --checkpoint "$RUNS/round2/main/0.013/checkpoint_latest.pth.tar" \
            --save_path "$RUNS/round2/finetune" --max-minutes 20
    done
    # then: python tools/ship_weights.py $RUNS/round2/finetune/0.0008/checkpoint_latest.pth.tar \
    #   $RUNS/round2/finetune/0.004/… $RUNS/round2/main/0.013/… $RUNS/round2/finetune/0.045/… $RUNS/round2/finetune/0.15/…
fi

if [ -n "${ROUND3:-}" ]; then
    # q3, q4, q5 come from a third round on round 2's main run (after ROUND2=1): the main run continued with its
    # optimizer to epoch 64 (a warm cosine restart at 5.3e-4, decaying to 1e-5), then q4 and q5 continued from its
    # end at their λ (--epochs 72) and were stopped with Ctrl-C after epoch 68 (10 minutes each, run side by side).
    python -u train.py "${COMMON[@]}" --lambda 0.013 -lr 1e-3 --epochs 64 --continue_train \
        --checkpoint "$RUNS/round2/main/0.013/checkpoint_latest.pth.tar" --save_path "$RUNS/round3/main" --max-minutes 110
    for L in 0.045 0.15; do
        python -u train.py "${COMMON[@]}" --lambda $L -lr 1e-3 --epochs 72 --continue_train \
            --checkpoint "$RUNS/round3/main/0.013/checkpoint_latest.pth.tar" --save_path "$RUNS/round3/finetune" --max-minutes 10
    done
    # then: python tools/ship_weights.py icwem-small-q1 icwem-small-q2 $RUNS/round3/main/0.013/checkpoint_best.pth.tar \
    #   $RUNS/round3/finetune/0.045/checkpoint_latest.pth.tar $RUNS/round3/finetune/0.15/checkpoint_latest.pth.tar
fi

if [ -n "${ROUND4:-}" ]; then
    # q1 and q2 come from a fourth round on round 3's main run (after ROUND3=1): each continued from its end,
    # optimizer state kept, at its own λ to epoch 90 (a warm cosine restart at 2.1e-4 decaying to 1e-5; 728 steps).
    for L in 0.0008 0.004; do
        python -u train.py "${COMMON[@]}" --lambda $L -lr 1e-3 --epochs 90 --continue_train \
            --checkpoint "$RUNS/round3/main/0.013/checkpoint_latest.pth.tar" --save_path "$RUNS/round4/finetune" --max-minutes 56
    done
    # then: python tools/ship_weights.py $RUNS/round4/finetune/0.0008/checkpoint_latest.pth.tar \
    #   $RUNS/round4/finetune/0.004/checkpoint_latest.pth.tar icwem-small-q3 icwem-small-q4 icwem-small-q5
fi

if [ -n "${ROUND5:-}" ]; then
    # Round 5 (after ROUND4=1): a new lowest rate point, λ 0.0003, continued from round 4's λ 0.0008 run
    # (epochs 90 -> 116), and λ 0.15 from round 3's fine-tune (68 -> 94), optimizer state kept, ~700 steps each
    # (they ran side by side, one thread each). Round 4's two runs move up to q2 and q3; round 3's q3 and q5 go.
    python -u train.py "${COMMON[@]}" --lambda 0.0003 -lr 1e-3 --epochs 116 --continue_train \
        --checkpoint "$RUNS/round4/finetune/0.0008/checkpoint_latest.pth.tar" --save_path "$RUNS/round5/finetune" --max-minutes 45
    python -u train.py "${COMMON[@]}" --lambda 0.15 -lr 1e-3 --epochs 94 --continue_train \
        --checkpoint "$RUNS/round3/finetune/0.15/checkpoint_latest.pth.tar" --save_path "$RUNS/round5/finetune" --max-minutes 50
    # then: python tools/ship_weights.py $RUNS/round5/finetune/0.0003/checkpoint_latest.pth.tar \
    #   $RUNS/round4/finetune/0.0008/checkpoint_latest.pth.tar $RUNS/round4/finetune/0.004/checkpoint_latest.pth.tar \
    #   $RUNS/round3/finetune/0.045/checkpoint_latest.pth.tar $RUNS/round5/finetune/0.15/checkpoint_latest.pth.tar
fi

# Rounds 6 to 8: the wider data, colour augmentation, 64² crops in batches of 8, lr 3e-4 on a cosine.
R6=(-d "$RUNS/data" --model-config small --batch-size 8 --test-batch-size 8 --patch-size 64 64 --augment
    --colour-augment --repeat 4 --lr-schedule cosine --decoder-clamp -n 1 --save-every-steps 50 -lr 3e-4)
if [ -n "${ROUND6:-}" ]; then
    # Round 6: the data grows from 7 scikit-image photos to 64 pictures (scikit-image + three Debian wallpaper
    # packages; plasma-Path and plasma-EveningGlow held out with chelsea and coffee), and every crop is put in a
    # random channel order (--colour-augment). Each rate point is fine-tuned from its shipped round-5 file at
    # its own λ: lr 3e-4 on a cosine to 3e-6, batch 8 of 64x64, 32 steps per epoch (--repeat 4), one thread
    # each, all five side by side. λ 0.004 first ran 10 epochs alone (314 steps: the crop-size comparison in
    # benchmarks/RESULTS.md) and was continued from there. Below, each schedule runs at its final length. The
    # session's runs started longer (--epochs 30 for q1 and q3, 12 for q2/q4/q5) and were stopped with Ctrl-C
    # and continued with --continue_train at these lengths (after 7, 4 and 2 epochs), so that each cosine
    # ended within the session: their first epochs had a slightly higher learning rate than these commands.
    python tools/training_data.py --out "$RUNS/data"
    python -u train.py "${R6[@]}" --lambda 0.004 --epochs 10 --checkpoint models/weights/icwem-small-q3.pt \
        --no-continue_train --save_path "$RUNS/round6/p64"
    python -u train.py "${R6[@]}" --lambda 0.004 --epochs 10 --no-continue_train \
        --checkpoint "$RUNS/round6/p64/0.004/checkpoint_latest.pth.tar" --save_path "$RUNS/round6/prod"
    python -u train.py "${R6[@]}" --lambda 0.0003 --epochs 12 --checkpoint models/weights/icwem-small-q1.pt \
        --no-continue_train --save_path "$RUNS/round6/prod"
    for QL in "q2 0.0008" "q4 0.045" "q5 0.15"; do
        set -- $QL
        python -u train.py "${R6[@]}" --lambda "$2" --epochs 8 --checkpoint "models/weights/icwem-small-$1.pt" \
            --no-continue_train --save_path "$RUNS/round6/prod"
    done
    # then: python tools/ship_weights.py $RUNS/round6/prod/0.0003/checkpoint_latest.pth.tar \
    #   $RUNS/round6/prod/0.0008/… $RUNS/round6/prod/0.004/… $RUNS/round6/prod/0.045/… $RUNS/round6/prod/0.15/…
fi

if [ -n "${ROUND7:-}" ]; then
    # Round 7: the same recipe as round 6, continued from each round-6 file at its λ (models/weights/ as
    # round 6 shipped them, commit 97618c3), all four side by side on one thread each, on round 6's data.
    # The session's runs started at --epochs 44 (32 for q3), were stopped after 7 epochs with SIGTERM (which saves a resumable checkpoint) and continued with
    # --continue_train at the lengths below, so that each cosine ended within the session: their first 7
    # epochs had a slightly higher learning rate than these commands give.
    for QLE in "q1 0.0003 34" "q2 0.0008 34" "q3 0.004 26" "q4 0.15 34"; do
        set -- $QLE
        python -u train.py "${R6[@]}" --lambda "$2" --epochs "$3" --checkpoint "models/weights/icwem-small-$1.pt" \
            --no-continue_train --save_path "$RUNS/round7/prod" &
    done
    wait
    # then: python tools/ship_weights.py $RUNS/round7/prod/0.0003/checkpoint_latest.pth.tar \
    #   $RUNS/round7/prod/0.0008/… $RUNS/round7/prod/0.004/… $RUNS/round7/prod/0.15/…
fi

if [ -n "${ROUND8:-}" ]; then
    # Round 8: round 7 again, from each round-7 file at its λ (models/weights/ as round 7 shipped them, commit
    # 96be6fb), the four side by side on one thread each. The session's runs started at --epochs 60, were
    # stopped with SIGTERM after 7 epochs (a session's end), continued with --continue_train at 50, stopped
    # again after epoch 15 and continued at 40, so their first 15 epochs had a slightly higher learning rate
    # than this command gives.
    for QL in "q1 0.0003" "q2 0.0008" "q3 0.004" "q4 0.15"; do
        set -- $QL
        python -u train.py "${R6[@]}" --lambda "$2" --epochs 40 --checkpoint "models/weights/icwem-small-$1.pt" \
            --no-continue_train --save_path "$RUNS/round8/prod" &
    done
    wait
    # then: python tools/ship_weights.py $RUNS/round8/prod/0.0003/checkpoint_latest.pth.tar \
    #   $RUNS/round8/prod/0.0008/… $RUNS/round8/prod/0.004/… $RUNS/round8/prod/0.15/…
fi

if [ -n "${ENTROPY_STAGE:-}" ]; then
    # The entropy stage on round 8's files (models/weights/ as round 8 shipped them, commit 93296ec): each file's
    # entropy model alone, 1,000 steps on the latents of the training pictures at a longer side of 512, the
    # transforms untouched (tools/entropy_stage.py; docs/training.md). Two ran side by side, one thread each.
    python tools/training_data.py --out "$RUNS/data512" --max-side 512
    for Q in q1 q2 q3 q4; do
        python -u tools/entropy_stage.py "icwem-small-$Q" --data "$RUNS/data512" -o "$RUNS/entropy/$Q.pth.tar"
    done
    # then: python tools/ship_weights.py $RUNS/entropy/q1.pth.tar $RUNS/entropy/q2.pth.tar \
    #   $RUNS/entropy/q3.pth.tar $RUNS/entropy/q4.pth.tar
fi

if [ -n "${VARIABLE_RATE:-}" ]; then
    # The shipped variable-rate model (icwem-small-vr): one network for every quality in [1, 5]. From round 7's
    # q3 file (models/weights/ at commit 96be6fb), 5,120 steps on 64² crops with a quality drawn per batch
    # (λ log-linear between the five points), one thread; then the entropy stage; then the whole model on
    # 256² crops in batches of 2 (stopped by --max-minutes after 769 of the 896 steps this schedule
    # gives, its cosine at 2e-5; beside another run, one thread each); then the entropy stage again; then
    # both once more.
    python tools/training_data.py --out "$RUNS/data"
    python tools/training_data.py --out "$RUNS/data512" --max-side 512
    LAMBDAS=(0.0003 0.0008 0.004 0.025 0.15)
    python -u train.py "${R6[@]}" --lambdas "${LAMBDAS[@]}" --epochs 160 --checkpoint models/weights/icwem-small-q3.pt \
        --no-continue_train --save_path "$RUNS/vr1/prod"
    python -u tools/entropy_stage.py "$RUNS/vr1/prod/0.0003-0.15/checkpoint_latest.pth.tar" --data "$RUNS/data512" \
        -o "$RUNS/entropy/vr1.pth.tar"
    # train_256 FROM RUN FLAGS…: the whole model on 256² crops in batches of 2 from checkpoint FROM into $RUNS/RUN,
    # with fresh optimizers; FLAGS add the run's own learning rate, length and saves.
    train_256() {
        local from=$1 run=$2
        shift 2
        python -u train.py -d "$RUNS/data512" --batch-size 2 --patch-size 256 256 --augment --colour-augment \
            --repeat 4 --lr-schedule cosine --decoder-clamp --lambdas "${LAMBDAS[@]}" --checkpoint "$from" \
            --no-continue_train --save_path "$RUNS/$run" "$@"
    }
    # One step of the whole model on 256² crops from checkpoint FROM (into $RUNS/RUN), then the entropy stage
    # into OUT: step_256 FROM RUN EPOCHS MINUTES OUT
    step_256() {
        train_256 "$1" "$2" -lr 1e-4 --epochs "$3" --max-minutes "$4"
        python -u tools/entropy_stage.py "$RUNS/$2/0.0003-0.15/checkpoint_latest.pth.tar" --data "$RUNS/data512" -o "$5"
    }
    step_256 "$RUNS/entropy/vr1.pth.tar" vr256 7 88 "$RUNS/entropy/vr.pth.tar"
    # (shipped at this point as fingerprint 1773a395…, commit 0dabf87.) Then the same step on 256² crops again,
    # from that shipped float16 file (stopped by --max-minutes after 810 of the 896 steps, its cosine at 2e-5;
    # beside another run, one thread each), and the entropy stage once more:
    git show 0dabf87:models/weights/icwem-small-vr.pt > "$RUNS/icwem-small-vr-1773a395.pt"
    step_256 "$RUNS/icwem-small-vr-1773a395.pt" vr256b 7 92 "$RUNS/entropy/vr2.pth.tar"
    # (shipped at this point as fingerprint ffa68f63…, commit 303295d.) Then the same step once more from that
    # float32 checkpoint, six epochs this time (all 768 steps in 88 minutes, beside another run), and the
    # entropy stage once more:
    step_256 "$RUNS/entropy/vr2.pth.tar" vr256c 6 88 "$RUNS/entropy/vr3.pth.tar"
    # (shipped at this point as fingerprint 6430ea60…, commit 2ddce2d.) Then the same step once more from that
    # float32 checkpoint (stopped by --max-minutes after 693 of the 768 steps, its cosine at 3e-6; beside
    # another run, one thread each), and the entropy stage once more:
    step_256 "$RUNS/entropy/vr3.pth.tar" vr256d 6 80 "$RUNS/entropy/vr4.pth.tar"
    # (shipped at this point as fingerprint 0514661c…, commit 1121e48.) Every step above ran while --augment
    # only flipped; it now also turns each picture by a multiple of 90 degrees (the same draws, then the turn),
    # and with that the same step once more from that float32 checkpoint (stopped by --max-minutes after 707
    # of the 768 steps, its cosine at 3e-6; beside another run, one thread each), and the entropy stage once
    # more:
    step_256 "$RUNS/entropy/vr4.pth.tar" vr256e 6 80 "$RUNS/entropy/vr5.pth.tar"
    # (shipped at this point as fingerprint d4c78408…, commit 57bfbad.) From here each run keeps every save (one
    # each 32 steps) and the model is the mean of a run's last six saves: one save is a noisy sample of a run.
    # tail_256 FROM RUN LR SEED MINUTES: the same step on 256² crops (six epochs), then that mean into RUN/avg6.
    tail_256() {
        train_256 "$1" "$2" -lr "$3" --seed "$4" --epochs 6 --max-minutes "$5" --save-every-steps 32 --keep-step-checkpoints
        python tools/average_weights.py "$RUNS/$2"/0.0003-0.15/step*_checkpoint.pth.tar --last 6 -o "$RUNS/$2/avg6.pth.tar"
    }
    # soup RUN_A RUN_B OUT: the mean of two tail_256 runs' means into OUT.
    soup() {
        python tools/average_weights.py "$RUNS/$1/avg6.pth.tar" "$RUNS/$2/avg6.pth.tar" -o "$3"
    }
    # mean_of_means RUN_A RUN_B OUT: that mean (into RUN_A-RUN_B), then the entropy stage into OUT.
    mean_of_means() {
        soup "$1" "$2" "$RUNS/$1-$2.pth.tar"
        python -u tools/entropy_stage.py "$RUNS/$1-$2.pth.tar" --data "$RUNS/data512" -o "$3"
    }
    # Stopped by --max-minutes at step 641 of 768 (run in two parts, resumed exactly), then the entropy stage:
    tail_256 "$RUNS/entropy/vr5.pth.tar" vr256f 1e-4 100 80
    python -u tools/entropy_stage.py "$RUNS/vr256f/avg6.pth.tar" --data "$RUNS/data512" -o "$RUNS/entropy/vr6.pth.tar"
    # Two arms from that, one thread each: all 768 steps at lr 1e-4 (run in two parts, resumed exactly), and lr 5e-5
    # with another seed (stopped at step 641); the mean of the two means, then the entropy stage once more:
    tail_256 "$RUNS/entropy/vr6.pth.tar" vr256g 1e-4 100 106
    tail_256 "$RUNS/entropy/vr6.pth.tar" vr256h 5e-5 101 67
    mean_of_means vr256g vr256h "$RUNS/entropy/vr7.pth.tar"
    # (shipped at this point as fingerprint 5c7bc99e…, commit 4cd45d3.) Then two arms from that shipped float16
    # file, both at lr 5e-5 with new seeds (all 768 steps each, side by side), the mean of their means, and the
    # entropy stage once more:
    git show 4cd45d3:models/weights/icwem-small-vr.pt > "$RUNS/icwem-small-vr-5c7bc99e.pt"
    tail_256 "$RUNS/icwem-small-vr-5c7bc99e.pt" vr256i 5e-5 102 66
    tail_256 "$RUNS/icwem-small-vr-5c7bc99e.pt" vr256j 5e-5 103 66
    mean_of_means vr256i vr256j "$RUNS/entropy/vr8.pth.tar"
    # (shipped at this point as fingerprint cc9f15e6…, commit a4ecc01.) Then two arms from that float32
    # checkpoint, lr 5e-5, new seeds (all 768 steps each, side by side, each run in two parts, resumed exactly),
    # and the mean of their means without the entropy stage: on models trained on 256² crops the stage costs
    # held-out rate at the low qualities (benchmarks/RESULTS.md, "A tenth step"):
    tail_256 "$RUNS/entropy/vr8.pth.tar" vr256k 5e-5 104 70
    tail_256 "$RUNS/entropy/vr8.pth.tar" vr256l 5e-5 105 55
    soup vr256k vr256l "$RUNS/vr9.pth.tar"
    # rounds "FROM RUN_A RUN_B SEED OUT MINUTES" …: rounds of the same, each from the mean before it: two runs
    # from FROM (RUN_A with SEED, RUN_B with SEED + 1, lr 5e-5, all 768 steps each, side by side) and the mean of
    # their means into OUT.
    rounds() {
        local round from run_a run_b seed out minutes
        for round in "$@"; do
            read -r from run_a run_b seed out minutes <<< "$round"
            tail_256 "$RUNS/$from.pth.tar" "$run_a" 5e-5 "$seed" "$minutes"
            tail_256 "$RUNS/$from.pth.tar" "$run_b" 5e-5 $((seed + 1)) "$minutes"
            soup "$run_a" "$run_b" "$RUNS/$out.pth.tar"
        done
    }
    # (shipped at this point as fingerprint e7f8d581…, commit fa53afb.) Then six rounds (vr256n run in two parts,
    # resumed exactly); the file was shipped after vr11 (fingerprint 402683e4…, commit 3ca8f22) and after vr14
    # (b6421237…); the runs of vr15 were each run in two parts, resumed exactly:
    rounds "vr9 vr256m vr256n 106 vr10 66" "vr10 vr256o vr256p 108 vr11 150" \
           "vr11 vr256q vr256r 110 vr12 150" "vr12 vr256s vr256t 112 vr13 150" \
           "vr13 vr256u vr256v 114 vr14 150" "vr14 vr256w vr256x 116 vr15 150"
    # One run from vr15 alone (its pair was an experiment that was not kept; seed 119 went unused), then one more
    # round of two from that run's mean (each run in two parts, resumed exactly):
    tail_256 "$RUNS/vr15.pth.tar" vr256y 5e-5 118 150
    tail_256 "$RUNS/vr256y/avg6.pth.tar" vr256z 5e-5 120 150
    tail_256 "$RUNS/vr256y/avg6.pth.tar" vr256za 5e-5 121 150
    soup vr256z vr256za "$RUNS/vr16.pth.tar"
    # (shipped at this point as fingerprint c8f427cf…, commit 404b771.) Two more rounds (every run in two parts,
    # resumed exactly); the first alone gained nothing by the proxy:
    rounds "vr16 vr256zb vr256zc 122 vr17 150" "vr17 vr256zd vr256ze 124 vr18 150"
    # then: python tools/ship_weights.py icwem-small-q1 icwem-small-q2 icwem-small-q3 icwem-small-q4 \
    #   --variable-rate $RUNS/vr18.pth.tar
fi
