"""The row-band engine: any stack of blocks that say how they stream runs over any image size in
bounded memory.

A block that streams gives its computation as a list of *stages* (``stages()``, beside its ``forward``,
which runs the same stages on the whole map): each stage is a function and the rule of which output
rows it computes exactly from given input rows (``Step``). The engine here knows no block: ``run_stages``
runs a stack on the whole map, ``stream_rows`` over bands of rows at full width, where each stage keeps
the few rows of its own input that its next band needs again. Nothing is computed twice except those
rows, so the redundant work stays a few percent while peak memory is a band, not the image: it grows
with the width, never with the height. Only the latent (1/16 of each side) has to exist whole.

When is an output row of a stage exact? A stage sees its input rows ``[p, q)`` of a map of height H
(rows outside ``[0, H)`` are the zero padding the whole map sees too). Composing these rules, in the
stage's own units, gives the rows ``[lo, hi)`` it may emit (``Step`` below):

* k×k convolution, stride 1 (radius r = k // 2): ``[p + r, q − r)``; no loss at a true map edge.
* 3×3 convolution, stride 2, padding 1: output o reads 2o − 1 … 2o + 1, so ``[⌈(p + 1)/2⌉, ⌊q/2⌋)``;
  the band must start on an even row for its outputs to fall on the whole map's grid.
* pixel shuffle ×2 (sub-pixel convolution): ``[2p, 2q)``.
* window attention (window w, shift s): rows attend within groups bounded by 0, H and the grid lines
  s + w·k (W: s = 0; SW: s = w/2, where the cyclic shift's mask splits the wrapped window into its two
  real halves). A band that starts on a multiple of w has the whole map's grid lines inside it, plus
  its own ends as extra lines, so exact rows are those whose whole-map group lies in ``[p, q)``: from
  the first grid line ≥ p to the last ≤ q. Its MLP, LayerNorms and the 1×1 convolutions are per token.
* parallel branches (a TCB's residual-conv half beside its Swin half; residual skips): the
  intersection, here always decided by the wider branch.

For the published configuration that makes, per stage: the enhancement block 11 rows (two dense
blocks of five chained 3×3 convolutions, one 3×3 between them), the INN 72 rows (per affine coupling
2·(k−1): two subnets of a k×k, a 1×1 and a k×k convolution in sequence; three couplings each at
k = 5, 5, 3, 3), a strided residual block 2 rows of its output, a TCB up to one window (8 rows, its
shifted half 4) and its 3×3 pair 2 rows. Chained without caching, these contexts would add up to a
halo of 240 image rows on each side of every band (``chain_halo``) — why the stages stream instead.
An enhancement block streams one convolution at a time (``EnhBlock.stages``) and the INN one operation
at a time (``InvertibleNetwork.stages``), so each layer repeats its own context, not the block's 11 or
the INN's 72.

Columns are never split, so every band has the whole map's column windows; the attention is the same
code as for the whole map (``models/attention.py`` pads and masks a band exactly like a map).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

# Default band: about this many image pixels (rows = BAND_PIXELS // width), so that peak memory stays
# the same for any width up to BAND_PIXELS / MIN_BAND_ROWS; chosen by benchmarks/large_images.py.
BAND_PIXELS = 3 << 18
MIN_BAND_ROWS = 64
# On a GPU the default is the whole image, as long as its working memory fits in the GPU's free memory:
# about this many bytes per image pixel for the published model (whole-image coding of 2048×1365 on the
# CPU: 6.1 / 6.9 GiB peak, 1.5 GiB of it interpreter and weights, i.e. 1.7 / 2.0 KiB per pixel; with a
# margin). Beyond that, bands of the rows that fit.
GPU_BYTES_PER_PIXEL = 5 << 9

# (lo, hi, H): exact rows [lo, hi) of a map of H rows -> the same after one step of a layer.
Step = Callable[[int, int, int], Tuple[int, int, int]]

# What passes between stages: one map, or a tuple of maps of one height that a block keeps side by side
# (an enhancement block's input beside its dense features, SWAtten's projection beside its Swin branch)
# instead of concatenating them along the channels, which would copy them at every stage.
Map = Union[Tensor, Tuple[Tensor, ...]]


def map_height(m: Map) -> int:
    return (m if isinstance(m, Tensor) else m[0]).shape[-2]


def map_rows(m: Map, start: int, stop: Optional[int] = None) -> Map:
    """Rows [start, stop) of every map in ``m`` (views)."""
    if isinstance(m, Tensor):
        return m[..., start:stop, :]
    return tuple(t[..., start:stop, :] for t in m)


def map_clone(m: Map) -> Map:
    return m.clone() if isinstance(m, Tensor) else tuple(t.clone() for t in m)


def map_cat_rows(a: Map, b: Map) -> Map:
    """``b``'s rows below ``a``'s."""
    if isinstance(a, Tensor):
        return torch.cat((a, b), dim=-2)
    return tuple(torch.cat(pair, dim=-2) for pair in zip(a, b))


def conv_step(radius: int) -> Step:
    """A stride-1 convolution reading ``radius`` rows on each side."""

    def step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
        return (lo if lo == 0 else lo + radius), (hi if hi == H else hi - radius), H

    return step


def strided_conv_step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
    """A 3×3 convolution with stride 2 and padding 1 (output o reads input rows 2o − 1 … 2o + 1)."""
    return (0 if lo == 0 else (lo + 2) // 2), (H // 2 if hi == H else hi // 2), H // 2


def shuffle_step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
    """Pixel shuffle ×2: each row becomes two."""
    return 2 * lo, 2 * hi, 2 * H


def window_step(size: int, shift: int) -> Step:
    """Window attention; valid only on a band that starts on a multiple of ``size``."""

    def step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
        first = 0 if lo == 0 else min(H, shift + size * -((shift - lo) // size))  # first grid line >= lo
        last = H if hi >= H else max(0, shift + size * ((hi - shift) // size))  # last grid line <= hi
        return first, last, H

    return step


def chain(*steps: Step) -> Step:
    def step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
        for s in steps:
            lo, hi, H = s(lo, hi, H)
        return lo, hi, H

    return step


def both(a: Step, b: Step) -> Step:
    """Two parallel branches whose outputs are added: a row is exact where both are."""

    def step(lo: int, hi: int, H: int) -> Tuple[int, int, int]:
        lo_a, hi_a, H_a = a(lo, hi, H)
        lo_b, hi_b, H_b = b(lo, hi, H)
        assert H_a == H_b, "parallel branches must keep the same geometry"
        return max(lo_a, lo_b), min(hi_a, hi_b), H_a

    return step


@dataclass
class Stage:
    """One layer of a streamed transform: its function, its exactness rule and the band alignment."""

    fn: Callable[[Map], Map]
    rule: Step
    align: int = 1  # a band must start on a multiple of this (input rows)
    scale: Fraction = field(default=Fraction(1))  # output rows per input row
    share: Fraction = field(default=Fraction(1))  # of the band it computes at once (wide maps: less)

    def exact(self, p: int, q: int, H: int) -> Tuple[int, int]:
        """Output rows computed exactly from input rows [p, q) of a map of H rows."""
        assert p % self.align == 0, f"band start {p} is not a multiple of {self.align}"
        lo, hi, _ = self.rule(p, q, H)
        return lo, max(lo, hi)

    def context_start(self, done: int, H: int) -> int:
        """The latest aligned input row from which output row ``done`` onwards is exact."""
        p = int(done / self.scale) // self.align * self.align
        while p > 0 and self.exact(p, H, H)[0] > done:
            p -= self.align
        return p


# ------------------------------------------------------------------------------ helpers for blocks' stages
def conv_radius(conv: nn.Conv2d) -> int:
    """Rows a 'same' stride-1 convolution reads on each side of an output row."""
    k = conv.kernel_size[0]
    assert conv.stride == (1, 1) and k % 2 == 1 and conv.padding[0] == k // 2, "expected a 'same' odd conv"
    return k // 2


def chain_radius(module: nn.Module) -> int:
    """Rows of context of a chain of convolutions (residual units included): their radii add up."""
    return sum(m.kernel_size[0] // 2 for m in module.modules() if isinstance(m, nn.Conv2d))


def then(stage: Stage, after: Callable[[Map], Map]) -> Stage:
    """``stage`` followed by a pointwise function (an activation, a clamp, a cast): same rule."""
    fn = stage.fn
    return replace(stage, fn=lambda x: after(fn(x)))


def before(stage: Stage, first: Callable[[Map], Map]) -> Stage:
    """A pointwise function (a layout, a cast), then ``stage``: same rule."""
    fn = stage.fn
    return replace(stage, fn=lambda x: fn(first(x)))


def beside(stage: Stage) -> Stage:
    """``stage`` on the last map of a tuple, the maps before it carried along unchanged: same rule."""
    fn = stage.fn
    return replace(stage, fn=lambda m: (*m[:-1], fn(m[-1])))


def onednn_layout(t: Tensor) -> Tensor:
    """Channels-last on the CPU, where oneDNN then convolves without copying its input (above); a GPU
    keeps NCHW (``docs/cuda.md``: not measured against channels-last there)."""
    return t.contiguous(memory_format=torch.channels_last) if t.device.type == "cpu" else t


def in_onednn_layout(stages: Sequence[Stage]) -> List[Stage]:
    """Stages run on channels-last maps on the CPU (``onednn_layout``), handing back a contiguous NCHW map
    as the blocks themselves do: oneDNN convolves those without first copying each input to its own
    layout, and a TCB's Swin half is then a plain NHWC map (no copies around its LayerNorms and
    windows). Measured with ``benchmarks/side_by_side.py``. The values are the blocks' own."""
    stages = list(stages)
    stages[0] = before(stages[0], onednn_layout)
    stages[-1] = then(stages[-1], lambda t: t.contiguous())
    return stages



def run_stages(stages: Sequence[Stage], x: Map) -> Map:
    """The stages on the whole map at once (an image small enough for one band)."""
    for stage in stages:
        x = stage.fn(x)
    return x


# ------------------------------------------------------------------------------ band heights
# The latent's networks stream too (bounded memory for large images): h_mean_s / h_scale_s, a slice's
# SWAtten and mean / scale / LRP networks. Their bands are counted in latent rows.
LATENT_BAND_PIXELS = 1 << 13  # latent pixels per band (rows = this / latent width), like BAND_PIXELS
MIN_LATENT_BAND_ROWS = 16


# The float64 path of a whole latent on a GPU, per latent pixel (the CPU measured 1.23 GiB for a
# 64×256 latent of the published model, 77 KiB per pixel; with a margin).
GPU_BYTES_PER_LATENT_PIXEL = 96 << 10


def latent_band_rows(tile: Optional[int], width: int, device: Optional[torch.device] = None) -> int:
    """Latent rows per band of the entropy-parameter networks: 0 (whole) when ``tile`` is 0; on a GPU,
    the rows that fit in its free memory (``gpu_rows``); else about LATENT_BAND_PIXELS latent pixels
    (768×512's 32×48 latent runs whole)."""
    if tile == 0:
        return 0
    if device is not None and device.type == "cuda":
        return gpu_rows(device, width, GPU_BYTES_PER_LATENT_PIXEL, MIN_LATENT_BAND_ROWS)
    return max(MIN_LATENT_BAND_ROWS, LATENT_BAND_PIXELS // width)


def chain_halo(stages: Sequence[Stage], start: int = 1 << 16) -> Fraction:
    """Rows of the chain's input that an overlapping tile would need as a halo on each side if no
    stage kept its context: inexact rows at a tile's edge (starting at ``start``, aligned for every
    stage) spread through each stage's rule, and this is how deep they reach, in input rows."""
    position, H, scale = start, 1 << 24, Fraction(1)
    for stage in stages:
        position, _, H = stage.rule(position, H, H)  # the first row not reached by the edge
        scale *= stage.scale
    return position / scale - start


# ------------------------------------------------------------------------------ streaming
def _heap_trimmer() -> Callable[[], None]:
    """glibc's ``malloc_trim(0)``, or a no-op where there is none (macOS, musl, Windows).

    Each band allocates and frees maps of sizes that change from stage to stage; glibc serves the ones
    under its mmap threshold (up to 32 MB) from heaps that fragment and keep the freed pages resident,
    so without a trim the resident memory of a long stream creeps up band after band. Trimming after
    each band hands those pages back; it changes no value.
    """
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int

    def trim_heap() -> None:
        trim(0)

    return trim_heap


_trim_heap = _heap_trimmer()


def band_rows(tile: Optional[int], width: int, device: Optional[torch.device] = None) -> int:
    """Image rows per band: ``tile`` if given (0 = whole image); on a GPU the rows whose working memory
    fits in its free memory (``gpu_rows``: usually more than the image, i.e. the whole image at once);
    else about BAND_PIXELS pixels (the CPU's default, where bands cost nothing and bound the heap)."""
    if tile is not None:
        return tile
    if device is not None and device.type == "cuda":
        return gpu_rows(device, width, GPU_BYTES_PER_PIXEL, MIN_BAND_ROWS)
    return max(MIN_BAND_ROWS, BAND_PIXELS // width)


def gpu_rows(device: torch.device, width: int, bytes_per_pixel: int, minimum: int) -> int:
    """The rows of ``width`` pixels whose working memory (``bytes_per_pixel``) fits in ``device``'s free
    memory (what the driver reports plus what PyTorch's allocator holds but does not use)."""
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(minimum, free // (bytes_per_pixel * width))


class _StageStream:
    """One stage in a stream: buffers input rows and emits output rows as soon as they are exact."""

    def __init__(self, stage: Stage, height: int, band: int) -> None:
        self.stage = stage
        self.height = height
        self.out_height = int(height * stage.scale)
        # Compute once 3/4 of a band of new rows are exact (a band that arrives whole is computed at
        # once although its last rows wait for the next band's context), and at most 3/2 of a band
        # at a time (upsampling stages receive ever taller pieces from the stages before them).
        self.min_rows = max(1, 3 * band // 4)
        self.max_rows = max(1, 3 * band // 2)
        self.buffer: Optional[Map] = None
        self.start = 0  # input row held in buffer row 0
        self.done = 0  # output rows emitted so far

    @property
    def finished(self) -> bool:
        return self.done == self.out_height

    def feed(self, rows: Optional[Map]) -> None:
        """Append input rows; the caller drops its reference, so they exist once."""
        if rows is not None and map_height(rows):
            self.buffer = rows if self.buffer is None else map_cat_rows(self.buffer, rows)

    def emit(self, last: bool) -> Optional[Map]:
        """Up to ``max_rows`` output rows that became exact (None while fewer than ``min_rows`` have,
        or none at all once the input is complete)."""
        if self.buffer is None:
            return None
        end = self.start + map_height(self.buffer)
        assert end <= self.height and (end == self.height or not last)
        lo, hi = self.stage.exact(self.start, end, self.height)
        if hi - self.done < (1 if last else self.min_rows):
            return None
        assert lo <= self.done, "a stage lost rows it still needed"
        if hi - self.done > self.max_rows:
            hi = self.stage.exact(self.start, self._input_end(self.done + self.max_rows, end), self.height)[1]
        # Only the input those rows need: rows past it (a window stage's partial window) wait for the
        # next call instead of being computed now and again then.
        end = self._input_end(hi, end)
        out = self.stage.fn(map_rows(self.buffer, 0, end - self.start))
        first = int(self.start * self.stage.scale)
        emitted = map_rows(out, self.done - first, hi - first)
        if map_height(emitted) < map_height(out):
            emitted = map_clone(emitted)  # a view would keep all of ``out`` alive downstream
        self.done = hi
        keep = self.stage.context_start(hi, self.height)
        self.buffer = None if self.finished else map_clone(map_rows(self.buffer, keep - self.start))
        self.start = keep
        return emitted

    def _input_end(self, rows_out: int, end: int) -> int:
        """The first input row end (≤ ``end``) from which output rows up to ``rows_out`` are exact."""
        q = min(end, max(self.start + 1, int(rows_out / self.stage.scale)))
        while q < end and self.stage.exact(self.start, q, self.height)[1] < rows_out:
            q += 1
        return q


def _pump(streams: Sequence[_StageStream], box: List[Map], last: bool, sink: Callable[[Tensor], None]) -> None:
    """Feed the rows in ``box`` (handed over: taken out of it) to the first stream and pass each piece
    it emits down the rest, depth first, so that no stage holds more than a band or so at a time.
    ``last``: no more input will come."""
    head, rest = streams[0], streams[1:]
    head.feed(box.pop())
    while (piece := head.emit(last)) is not None:
        if rest:
            handed, piece = [piece], None
            _pump(rest, handed, last and head.finished, sink)
        else:
            sink(piece)


def stream_rows(stages: Sequence[Stage], x: Union[Tensor, Sequence[Tensor]], rows: int, unit: int = 1) -> Tensor:
    """Run ``stages`` over ``x`` (B×C×H×W) in bands of ``rows`` image rows; returns the whole output.

    ``x`` may be a sequence of maps of one height, to be concatenated along the channels: each band
    is concatenated when it is fed, so the whole concatenation never exists.

    ``unit``: image rows per row of ``x`` (1 for the image, 16 for the latent). A stage at 1/s of
    the image's resolution computes bands of about ``rows / s`` of its own rows, but at least
    ``rows / 2``: from 1/4 resolution down a map row costs 4× less memory per level, so taking more
    rows there keeps each stage's recomputed context a small part of its band (half a band is what a
    1/2-resolution stage takes, where memory and work peak). Nothing but each stage's own context is
    computed twice.
    """
    parts = [x] if isinstance(x, Tensor) else list(x)
    height = parts[0].shape[-2]
    streams, scale = [], Fraction(1, unit)  # resolution of the stage's input relative to the image
    for stage in stages:
        band = int(rows * max(scale * stage.scale, Fraction(1, 2)) * stage.share)
        streams.append(_StageStream(stage, int(height * scale * unit), band))
        scale *= stage.scale
    out = parts[0].new_empty(0)
    written = 0

    def sink(piece: Tensor) -> None:
        nonlocal out, written
        if written == 0:
            out = piece.new_empty(*piece.shape[:-2], streams[-1].out_height, piece.shape[-1])
        out[..., written:written + piece.shape[-2], :] = piece
        written += piece.shape[-2]

    feed = max(1, rows // unit)
    for top in range(0, height, feed):
        band = [t[..., top:top + feed, :] for t in parts]
        _pump(streams, [band[0] if len(band) == 1 else torch.cat(band, dim=1)], top + feed >= height, sink)
        if parts[0].device.type == "cpu":  # (a GPU's memory is PyTorch's own caching allocator's)
            _trim_heap()
    assert written and written == out.shape[-2], "the stream did not produce every row"
    return out
