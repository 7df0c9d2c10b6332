"""Encode one image to an .icwem file, or decode an .icwem file to a PNG, with an ICWEM checkpoint.

    python codec.py encode IMAGE -o FILE.icwem [--quality 1..4 | --checkpoint CK [--quality Q]] [--refine N]
    python codec.py decode FILE.icwem -o OUT.png [--checkpoint CK]

Without --checkpoint, encode uses the shipped model of --quality (default: the middle rate point) and
decode finds the shipped model by the fingerprint the file records. A variable-rate checkpoint
(models/variable_rate.py) codes at any --quality Q in [1, K], fractional ones included (default: the
middle); its files record Q (format version 4) and decode needs no flag for it. encode codes the image in
whichever of its six channel orders the model codes best, on a small proxy of it (utils/coding/channel_order.py;
the file records the order, decode restores it), so the result does not depend on which channel is which;
--keep-channel-order skips that search. encode --refine N optimises the
image's latents for N iterations before coding them (docs/refinement.md): a smaller file at the same
quality, decoded by the same decode; --refine-minutes bounds its time, and images above its memory
limit are refused before any work.

encode reads any image Pillow opens (each conversion it needs, e.g. alpha dropped, is printed as one
line on stderr) and writes the bitstream; decode writes a PNG of the input's width and height, the
same bytes test.py --real writes for that image. Both print a summary: size, bytes, bpp (all bytes of
the file, header included), seconds. Decode with the checkpoint the file was encoded with (the file
records its fingerprint). Both run on the CPU, or with --cuda on a GPU (docs/cuda.md). A file decodes to
the same symbols on any machine: the entropy parameters are computed portably (models/entropy/)
wherever it was encoded, GPUs included. decode refuses
images above --max-pixels (Pillow's default limit, ~89.5 MP) before doing any work. Exit codes: 0 done,
1 user error (unreadable, damaged or hostile file, not an image, wrong checkpoint, ...).
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence, Tuple

from utils.cli import add_max_pixels_argument, add_refine_arguments, add_tile_argument, positive_number, run_cli
from utils.coding.bitstream import DEFAULT_MAX_PIXELS, pixel_limit_problem, read_file, write_file
from utils.errors import UserError

# PyTorch, CompressAI and the model take seconds to import, so each command imports them only after it
# has read its input: a missing, damaged or foreign .icwem file is reported at once.


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = p.add_subparsers(dest="command", required=True)
    enc = commands.add_parser("encode", help="image -> .icwem bitstream file")
    enc.add_argument("input", help="image file (PNG, JPEG, WebP, BMP, TIFF, ...)")
    enc.add_argument("-o", "--output", required=True, help=".icwem file to write")
    enc.add_argument("--checkpoint", help="ICWEM checkpoint or shipped model name (default: the shipped model of --quality)")
    enc.add_argument("--quality", type=positive_number("quality"), default=None,
                     help="shipped model's rate point, 1 (smallest files) to the highest (default: the middle one); "
                          "with a variable-rate --checkpoint (or shipped model) any number in [1, K]")
    add_tile_argument(enc)
    add_bf16_argument(enc)
    add_cuda_argument(enc)
    add_refine_arguments(enc)
    enc.add_argument("--keep-channel-order", action="store_true",
                     help="code the image in its own channel order instead of the best of the six (quicker)")
    enc.set_defaults(run=encode)
    dec = commands.add_parser("decode", help=".icwem bitstream file -> PNG")
    dec.add_argument("input", help=".icwem file")
    dec.add_argument("-o", "--output", required=True, help="PNG file to write")
    dec.add_argument("--checkpoint", help="the ICWEM checkpoint the file was encoded with "
                                           "(default: the shipped model whose fingerprint the file records)")
    add_tile_argument(dec)
    add_max_pixels_argument(dec, DEFAULT_MAX_PIXELS)
    add_bf16_argument(dec)
    add_cuda_argument(dec)
    dec.set_defaults(run=decode)
    return p.parse_args(argv)


def add_cuda_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cuda", action="store_true",
                        help="run the model on CUDA (the CPU, with a warning, if there is none); the files are the "
                             "same portable files: the entropy parameters stay float64 (docs/cuda.md)")


def coding_device(args: argparse.Namespace):
    """--cuda as every script reads it (``select_device``)."""
    from utils.device import select_device

    return select_device(args.cuda, doing="coding")


def add_bf16_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bf16", choices=["off", "on", "auto"], default="off",
                        help="main transforms in bfloat16 autocast (entropy parameters stay exact, files stay "
                             "portable; pictures differ by bf16 rounding). auto: on where the CPU computes bf16 "
                             "natively (AVX512-BF16 or AMX). Default off: its quality cost and speed-up are "
                             "not yet measured on such a CPU")


def apply_speed_options(model, args: argparse.Namespace) -> None:
    """--tile and --bf16 onto a loaded model."""
    from models import bf16_native

    if args.tile is not None:
        model.tile = args.tile
    model.bf16_transforms = args.bf16 == "on" or (args.bf16 == "auto" and bf16_native())


def encoder_checkpoint(args: argparse.Namespace) -> Tuple[str, Optional[float]]:
    """The checkpoint to encode with and the quality to pass it: --checkpoint with --quality (a
    variable-rate checkpoint's, checked once it is loaded), else the shipped model of --quality."""
    from models.zoo import default_quality, shipped_by_quality

    if args.checkpoint is not None:
        return args.checkpoint, args.quality
    path, quality = shipped_by_quality(args.quality if args.quality is not None else default_quality())
    return str(path), quality


def decoder_checkpoint(args: argparse.Namespace, fingerprint: bytes) -> str:
    """--checkpoint if given, else the shipped model that the file names by its fingerprint."""
    from models.zoo import shipped_by_fingerprint

    if args.checkpoint is not None:
        return args.checkpoint
    path = shipped_by_fingerprint(fingerprint)
    if path is None:
        raise UserError(f"{args.input} was encoded with a model that is not shipped with ICWEM "
                        f"(fingerprint {fingerprint.hex()}); pass the checkpoint it was encoded with as --checkpoint")
    return str(path)


def encode(args: argparse.Namespace) -> int:
    from utils.image_io import read_image

    rgb, notices = read_image(args.input)
    for notice in notices:
        print(f"{args.input}: {notice}", file=sys.stderr)

    from models import load_checkpoint
    from models.refine import RefineOptions
    from utils.coding.channel_order import name as channel_order_name
    from utils.coding.codec import encode_image

    checkpoint, quality = encoder_checkpoint(args)
    model = load_checkpoint(checkpoint, map_location=coding_device(args))
    if quality is not None and not model.rate_points:
        raise UserError(f"--quality with --checkpoint needs a variable-rate checkpoint; {checkpoint} is fixed-rate: "
                        "give --checkpoint or --quality, not both (--quality then picks a shipped model)")
    apply_speed_options(model, args)
    refine = RefineOptions(args.refine, args.refine_lambda, args.refine_minutes, progress=True)
    order = 0 if args.keep_channel_order else None
    bs, stats = encode_image(model, rgb, refine, quality, order)  # an image too large to refine is refused before any work
    num_bytes = write_file(args.output, bs)
    print(
        f"{args.output}: {bs.width}x{bs.height}, {num_bytes} bytes, {stats['bpp']:.4f} bpp "
        f"(header and checksum included), encoded in {stats['encode_s']:.2f} s"
        + (f" at quality {bs.quality:g}" if bs.quality is not None else "")
        + (f", channels coded as {channel_order_name(bs.channel_order)}" if bs.channel_order else "")
    )
    if "refine" in stats:
        r = stats["refine"]
        print(f"refined for {r.iterations} iterations in {r.seconds:.1f} s (best at {r.best_iteration}): "
              f"rate + λ·distortion {r.initial:.4f} -> {r.objective:.4f} ({100 * (r.objective / r.initial - 1):+.2f} %), "
              f"estimated {r.bpp:.4f} bpp, {_psnr(r.mse):.2f} dB")
    return 0


def _psnr(mse: float) -> float:
    return float("inf") if mse <= 0 else 10 * math.log10(1 / mse)


def decode(args: argparse.Namespace) -> int:
    bs = read_file(args.input)
    problem = pixel_limit_problem(bs, args.max_pixels)  # before PyTorch is imported or a tensor exists
    if problem is not None:
        raise UserError(f"{args.input}: {problem}")

    from models import load_checkpoint
    from utils.coding.codec import decode_bitstream, packed_size
    from utils.image_io import write_png
    from utils.metrics import bpp_from_bytes

    model = load_checkpoint(decoder_checkpoint(args, bs.fingerprint), map_location=coding_device(args))
    apply_speed_options(model, args)
    try:
        rgb, stats = decode_bitstream(model, bs, args.max_pixels)
    except UserError as exc:
        raise UserError(f"{args.input}: {exc}") from None
    try:
        write_png(args.output, rgb)
    except OSError as exc:
        raise UserError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    num_bytes = packed_size(bs)
    print(
        f"{args.output}: {bs.width}x{bs.height} from {num_bytes} bytes, "
        f"{bpp_from_bytes(num_bytes, bs.height, bs.width):.4f} bpp, decoded in {stats['decode_s']:.2f} s"
        + (f" (quality {bs.quality:g})" if bs.quality is not None else "")
    )
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    run_cli(main)
