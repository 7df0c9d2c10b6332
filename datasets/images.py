"""Image folders for training and testing, laid out as CompressAI expects: ``DATA/train``, ``DATA/test``.

Why the crops are seeded per sample: the crop of sample ``index`` in epoch ``epoch`` is a pure function of
(seed, epoch, index), and so is the sample order (``ShardedEpochSampler``). A run resumed in the middle of
an epoch can therefore skip the batches already done and see exactly the data an uninterrupted run would,
whatever the number of loader workers and without replaying any random number generator. Loader workers
that live across epochs get the epoch with each index (``EpochIndices``).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from utils.errors import UserError
from utils.image_io import CHANNEL_ORDERS, find_images, read_image

# Domain tags keep the order and crop random streams apart even when their other seed words coincide.
_ORDER_STREAM = 0
_CROP_STREAM = 1


def _header_problem(path: Path) -> Optional[str]:
    """Why Pillow cannot even open ``path`` (cheap: reads the header only), or None."""
    try:
        if path.stat().st_size == 0:
            return "empty file"
        with Image.open(path) as img:
            img.size  # noqa: B018 - parsing the header is the check
    except Exception as exc:  # Pillow raises many types for files that are not images
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _pad_to(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an HxWx3 image that is smaller than the patch, so small images are used, not dropped."""
    pad_h, pad_w = max(0, height - img.shape[0]), max(0, width - img.shape[1])
    if not pad_h and not pad_w:
        return img
    # Reflection needs at least two pixels along an axis; a one-pixel line can only be repeated.
    mode = "reflect" if min(img.shape[:2]) > 1 else "edge"
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    return np.pad(img, pads, mode=mode)


# The smallest factor by which --augment shrinks a training image before cropping.
MIN_SCALE = 0.3


def _random_rescale_and_orient(img: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Shrink by a log-uniform factor in [MIN_SCALE, 1], then put the picture in one of its eight orientations.

    The orientation is a left-right flip or not, then a turn by 0, 90, 180 or 270 degrees: every way of laying
    a picture on its grid, which a few photos (their skies always at the top) otherwise teach the codec to
    expect. The shrunk image stays large enough for the patch in either orientation.
    """
    h, w = img.shape[:2]
    side = max(height, width)
    low = max(MIN_SCALE, side / min(h, w))
    scale = math.exp(rng.uniform(math.log(low), 0.0)) if low < 1 else 1.0
    flip = rng.random() < 0.5
    if scale < 1:
        size = (max(side, round(w * scale)), max(side, round(h * scale)))
        img = np.asarray(Image.fromarray(img).resize(size, Image.Resampling.LANCZOS))
    if flip:
        img = img[:, ::-1]
    return np.ascontiguousarray(np.rot90(img, int(rng.integers(4))))


class ImageFolder(Dataset):
    """Every image under ``root/split`` (recursive), as 3xHxW float32 patches in [0, 1] (or uint8).

    Args:
        root: the dataset folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.
        patch_size: (height, width) of the patches.
        random_crop: True for training (a crop seeded by (seed, epoch, index)); False for a centre crop
            (the test split, as in the original).
        seed: the run's seed.
        verbose: print the warnings about unreadable files (only one process of a distributed run should).
        augment: training only: before cropping, shrink the image by a random factor (log-uniform in
            [``MIN_SCALE``, 1], never below the patch) and lay it in one of its eight orientations (flip or not,
            turned by a multiple of 90 degrees). A few photos then give crops at many scales and angles, which
            is what a small training set lacks most.
        repeat: each epoch visits every image this many times (each visit a different random crop), so
            that an epoch of a few photos is more than one step.
        colour_augment: training only: put the crop's channels in one of their six orders, drawn uniformly.
            A codec should not care which channel is which; a few photos otherwise teach it their palette
            (green decoded as grey when the training photos have little green).
        uint8: return the patches as uint8 (0..255), a quarter of the bytes through the loader's shared
            memory and to the GPU; ``x.float() / 255`` gives the float patch exactly.

    An item is ``dataset[index]`` for the current epoch (``set_epoch``), or ``dataset[epoch, index]``.

    Images smaller than the patch are reflect-padded first. Files Pillow cannot open are reported once on
    stderr and left out; a file whose pixels turn out to be corrupt while training is reported (once per
    loader process) and replaced by the next readable image, so the batch keeps its size and order.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        patch_size: Sequence[int],
        random_crop: bool,
        seed: int = 0,
        verbose: bool = True,
        augment: bool = False,
        repeat: int = 1,
        colour_augment: bool = False,
        uint8: bool = False,
    ):
        folder = Path(root) / split
        if not folder.is_dir():
            raise UserError(f"dataset folder not found: {folder} (expected {Path(root) / 'train'} and {Path(root) / 'test'})")
        try:
            candidates = find_images(folder)
        except UserError:
            raise UserError(f"no images in {folder} (looked recursively for png, jpg, jpeg, webp, bmp, tif, tiff)") from None
        self.files: List[Path] = []
        for path in candidates:
            problem = _header_problem(path)
            if problem is None:
                self.files.append(path)
            elif verbose:
                print(f"warning: skipping unreadable image {path}: {problem}", file=sys.stderr)
        if not self.files:
            raise UserError(f"no readable images in {folder}")
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.random_crop = random_crop
        self.seed = int(seed)
        self.epoch = 0
        self.verbose = verbose
        self.augment = augment
        self.repeat = int(repeat)
        self.colour_augment = colour_augment
        self.uint8 = uint8
        self._reported: set = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns (call before iterating a loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.files) * self.repeat

    def __getitem__(self, item: Union[int, Tuple[int, int]]) -> torch.Tensor:
        epoch, index = item if isinstance(item, tuple) else (self.epoch, item)
        img = self._read(index % len(self.files))
        height, width = self.patch_size
        rng = np.random.default_rng([_CROP_STREAM, self.seed, epoch, index])
        if self.augment:
            img = _random_rescale_and_orient(img, height, width, rng)
        img = _pad_to(img, height, width)
        if self.random_crop:
            top = int(rng.integers(0, img.shape[0] - height + 1))
            left = int(rng.integers(0, img.shape[1] - width + 1))
        else:  # centre crop, rounded like torchvision's CenterCrop
            top = int(round((img.shape[0] - height) / 2.0))
            left = int(round((img.shape[1] - width) / 2.0))
        patch = img[top:top + height, left:left + width]
        if self.colour_augment:
            patch = patch[..., CHANNEL_ORDERS[int(rng.integers(len(CHANNEL_ORDERS)))]]
        patch = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)
        return patch.contiguous() if self.uint8 else patch.float().div_(255.0)

    def _read(self, index: int) -> np.ndarray:
        """Decode image ``index``, falling forward to the next readable one if its pixels are corrupt."""
        for offset in range(len(self.files)):
            path = self.files[(index + offset) % len(self.files)]
            try:
                img, _notices = read_image(path)
                return img
            except UserError as exc:
                if self.verbose and path not in self._reported:
                    print(f"warning: skipping unreadable image: {exc}", file=sys.stderr)
                self._reported.add(path)
        raise RuntimeError(f"none of the {len(self.files)} images could be decoded")


class EpochIndices(Sampler[Tuple[int, int]]):
    """``sampler``'s indices as ``(epoch, index)`` items for ``ImageFolder``: loader workers that persist
    across epochs hold the dataset as it was when they started, so the epoch travels with each index."""

    def __init__(self, sampler: "ShardedEpochSampler") -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        epoch = self.sampler.epoch
        return ((epoch, index) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class ShardedEpochSampler(Sampler[int]):
    """Deterministic sample order for one process of a (possibly distributed) run, resumable mid-epoch.

    Like ``DistributedSampler``: the epoch's order is a permutation seeded by (seed, epoch) (or 0..n-1 with
    ``shuffle=False``), and rank r takes every ``world_size``-th index starting at r. With ``pad=True`` the
    order is padded by repeating its head so that every rank gets the same number of samples (training must
    take the same number of steps everywhere); with ``pad=False`` every sample is used exactly once (testing).
    Unlike it, ``set_epoch(epoch, start)`` also skips the first ``start`` samples of this rank's share, so a
    resumed run starts at the batch where it stopped.
    """

    def __init__(self, num_samples: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, pad: bool = True):
        assert 0 <= rank < world_size
        self.num_samples = num_samples
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.pad = pad
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch = int(epoch)
        self.start = int(start)

    def shard(self) -> List[int]:
        """This rank's whole share of the current epoch, before skipping."""
        if self.shuffle:
            order = np.random.default_rng([_ORDER_STREAM, self.seed, self.epoch]).permutation(self.num_samples).tolist()
        else:
            order = list(range(self.num_samples))
        if self.pad and self.world_size > 1:
            total = math.ceil(self.num_samples / self.world_size) * self.world_size
            order = (order * math.ceil(total / len(order)))[:total]
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard()[self.start:])

    def __len__(self) -> int:
        return max(0, self.shard_size() - self.start)

    def shard_size(self) -> int:
        """Samples per epoch for this rank (without skipping); the same on every rank when padded."""
        if self.pad:
            return math.ceil(self.num_samples / self.world_size)
        return len(range(self.rank, self.num_samples, self.world_size))
