"""Train ICWEM (the original's command line, plus distributed training, exact resume and mixed precision).

    python -u ./train.py -d DATA --cuda --N 128 --lambda 0.05 --epochs 400 --lr_epoch 45 48 \\
        --save_path train_result --save
    torchrun --nproc_per_node=4 train.py -d DATA --cuda ...              # one process per GPU
    python train.py -d DATA --cuda ... --checkpoint train_result/0.05/checkpoint_latest.pth.tar   # resume

DATA holds ``train/`` and ``test/`` folders of images (searched recursively). Checkpoints and TensorBoard
logs go to SAVE_PATH/<lambda>/. Exit codes: 0 done (or --max-steps / --max-minutes reached), 1 user error,
130 / 143 stopped by SIGINT / SIGTERM after saving checkpoint_latest.pth.tar.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from utils.cli import run_cli
from utils.training import TrainConfig, train


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    d = TrainConfig.defaults()  # the one place the defaults are written
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # The original's flags, same names and meanings.
    p.add_argument("-d", "--dataset", required=True, help="folder with train/ and test/ image folders")
    p.add_argument("-e", "--epochs", type=int, default=d["epochs"], help="number of epochs")
    p.add_argument("-lr", "--learning-rate", type=float, default=d["learning_rate"], help="main Adam learning rate")
    p.add_argument("-n", "--num-workers", type=int, default=d["num_workers"], help="data loader processes per training process")
    p.add_argument("--lambda", dest="lmbda", type=float, default=d["lmbda"], help="rate-distortion trade-off λ")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="training batch size (per process)")
    p.add_argument("--test-batch-size", type=int, default=d["test_batch_size"], help="test batch size (per process)")
    p.add_argument("--aux-learning-rate", type=float, default=d["aux_learning_rate"], help="aux Adam learning rate (entropy-bottleneck quantiles)")
    p.add_argument("--patch-size", type=int, nargs=2, default=d["patch_size"], metavar=("H", "W"),
                   help="training crops (random) and test crops (centre), multiples of 64")
    p.add_argument("--cuda", action="store_true", help="train on CUDA (falls back to the CPU with a warning if there is none)")
    p.add_argument("--save", action=argparse.BooleanOptionalAction, default=d["save"],
                   help="write checkpoints (on by default, as in the original; --no-save turns them off)")
    p.add_argument("--seed", type=int, default=d["seed"], help="seed for initialisation, data order, crops and noise")
    p.add_argument("--clip_max_norm", type=float, default=d["clip_max_norm"], help="gradient-norm clipping (0 disables)")
    p.add_argument("--checkpoint", help="checkpoint to resume from, or a weights-only file to fine-tune from")
    p.add_argument("--type", choices=["mse", "ms-ssim"], default=d["type"], help="distortion measure of the loss")
    p.add_argument("--save_path", default=d["save_path"], help="checkpoints go to SAVE_PATH/<lambda>/")
    p.add_argument("--N", type=int, default=d["N"], help="override the model config's N (the icwem preset has 128)")
    p.add_argument("--lr_epoch", type=int, nargs="+", default=list(d["lr_epoch"]),
                   help="epochs at which the learning rate is multiplied by 0.1 (MultiStepLR milestones)")
    p.add_argument("--continue_train", action=argparse.BooleanOptionalAction, default=d["continue_train"],
                   help="with --checkpoint: continue its optimizers, schedule, epoch and data position "
                        "(--no-continue_train: take its weights only and start afresh)")
    p.add_argument("--skip_epoch", type=int, default=d["skip_epoch"],
                   help="start at this epoch (the learning-rate schedule is advanced as if the skipped epochs had run)")
    # Additions.
    p.add_argument("--model-config", default=d["model_config"], help="preset (icwem, icwem-n64, small, tiny) or JSON file")
    p.add_argument("--device", default=d["device"], help="device, e.g. cpu, cuda, cuda:1 (overrides --cuda)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default=d["amp"],
                   help="mixed precision for the forward pass, the entropy models and the loss staying float32 "
                        "(fp16 uses a gradient scaler; a CPU without native bf16/fp16 emulates them, slowly)")
    p.add_argument("--max-steps", type=int, default=d["max_steps"], help="stop (saving a resumable checkpoint) after this many steps in total")
    p.add_argument("--max-minutes", type=float, default=d["max_minutes"],
                   help="stop (saving a resumable checkpoint) after the step during which this many minutes of "
                        "training have passed in this invocation")
    p.add_argument("--log-every", type=int, default=d["log_every"], help="log the training losses to TensorBoard and the progress bar every this many steps")
    p.add_argument("--save-every-steps", type=int, default=d["save_every_steps"],
                   help="also save checkpoint_latest.pth.tar every this many steps within an epoch (0: only at epoch ends)")
    p.add_argument("--keep-step-checkpoints", action="store_true",
                   help="keep every checkpoint saved (at each --save-every-steps, epoch end and stop) as "
                        "step<N>_checkpoint.pth.tar, for tools/average_weights.py --last K")
    p.add_argument("--augment", action="store_true",
                   help="multi-scale random crops (each image shrunk by a random factor in [0.3, 1] first) in any of the eight "
                        "orientations (flipped or not, turned by a multiple of 90 degrees)")
    p.add_argument("--colour-augment", action="store_true",
                   help="put each training crop's colour channels in a random one of their six orders")
    p.add_argument("--repeat", type=int, default=d["repeat"], help="visit every training image this many times per epoch (different crops)")
    p.add_argument("--lr-schedule", choices=["multistep", "cosine"], default=d["lr_schedule"],
                   help="multistep: x0.1 at --lr_epoch (the original); cosine: decay to 1%% of -lr over --epochs")
    p.add_argument("--warmup-steps", type=int, default=d["warmup_steps"], metavar="S",
                   help="raise the learning rate linearly from -lr/S to -lr over the run's first S steps "
                        "(a fine-tune's fresh Adam otherwise moves every weight by -lr at once)")
    p.add_argument("--decoder-clamp", action="store_true",
                   help="train on the decoder's picture: clamp g_s's output and x̂ to [0, 1] as decompress does "
                        "(straight-through gradients)")
    p.add_argument("--lambdas", type=float, nargs="+", default=d["lambdas"], metavar="L",
                   help="train a variable-rate model instead: one rate point per λ (at least 2, lowest rate first); "
                        "each batch trains at a quality Q drawn uniformly from [1, K] with λ log-linear between "
                        "the points (--lambda is then unused). With --checkpoint of a fixed-rate model: its weights, "
                        "fresh optimizers, gain 1 at its λ (docs/training.md)")
    p.add_argument("--rate-gain", choices=["channel", "scalar"], default=d["rate_gain"],
                   help="with --lambdas: a gain per channel of y and rate point, or one per rate point")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return train(TrainConfig(**vars(args))).exit_code


if __name__ == "__main__":
    run_cli(main)
