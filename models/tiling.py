"""Row-band streaming of the analysis and synthesis transforms: any image size in bounded memory.

Only the latent (1/16 of each side) has to exist whole; every layer of ``enh → inv → g_a`` and of
``g_s → inv⁻¹ → enh`` is local along the rows, so both transforms can run over bands of rows at full
width and give the whole image's values (to float rounding). Instead of one big halo per band for the
whole chain, each *stage* (one layer: a TCB, a strided residual block, the INN, ...) keeps the few rows
of its own input that its next band needs again. Nothing is computed twice except those rows, so the
redundant work stays a few percent while peak memory is a band, not the image: it grows with the width,
never with the height.

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
An enhancement block streams one convolution at a time (``enh_stages``) and the INN one operation
at a time (``inn_stages``), so each layer repeats its own context, not the block's 11 or the INN's 72.

Columns are never split, so every band has the whole map's column windows; the attention is the same
code as for the whole map (``models/attention.py`` pads and masks a band exactly like a map).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass, field
from fractions import Fraction
from math import lcm
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from compressai.layers import ResidualBlockUpsample, ResidualBlockWithStride
from torch import Tensor

from .blocks import SWAtten, ConvTransBlock
from .enhance import DenseBlock, EnhBlock
from .inn import AffineCoupling, InvertibleNetwork

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

    fn: Callable[[Tensor], Tensor]
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


# ------------------------------------------------------------------------------ stages of ICWEM
def _conv_radius(conv: nn.Conv2d) -> int:
    k = conv.kernel_size[0]
    assert conv.stride == (1, 1) and k % 2 == 1 and conv.padding[0] == k // 2, "expected a 'same' odd conv"
    return k // 2


def _dense_radius(block: DenseBlock) -> int:
    """Each of the five convolutions reads the previous one's output: their radii add up."""
    return sum(_conv_radius(c) for c in (block.conv1, block.conv2, block.conv3, block.conv4, block.conv5))


def enh_radius(block: EnhBlock) -> int:
    """Rows of context an enhancement block reads on each side (11 for the published blocks)."""
    return sum(_dense_radius(m) if isinstance(m, DenseBlock) else _conv_radius(m) for m in block.layers)


def _operation_radius(op: nn.Module) -> int:
    """Rows of context of one INN operation, either direction: an affine coupling's second half reads
    the first half's output through a subnet (k×k, 1×1, k×k), so it reads two subnets' radii; the
    invertible 1×1 convolutions read nothing around them."""
    if not isinstance(op, AffineCoupling):
        return 0
    subnet = op.G1
    return 2 * (_conv_radius(subnet.conv1) + (subnet.conv3.kernel_size[0] - 1) // 2)


def inn_radius(inn: InvertibleNetwork) -> int:
    """Rows of context the INN reads on each side, either direction (72 for the published INN)."""
    return sum(_operation_radius(op) for op in inn.operations)


def inn_stages(inn: InvertibleNetwork, reverse: bool = False) -> List[Stage]:
    """The INN (or its inverse) streamed one operation at a time: each coupling computes only its own
    2·(k − 1) rows of context again for a piece, not the whole network's 72."""
    ops = list(reversed(inn.operations)) if reverse else list(inn.operations)
    return [Stage(op.reverse if reverse else op, conv_step(_operation_radius(op))) for op in ops]


def _tcb_rule(block: ConvTransBlock) -> Tuple[Step, int]:
    msa = block.trans_block.msa
    conv_half = chain(conv_step(1), conv_step(1))  # ResidualBlock: two 3×3 convolutions
    return both(conv_half, window_step(msa.window_size, msa.shift)), msa.window_size


def layer_stage(module: nn.Module) -> Stage:
    """The stage of one layer of g_a or g_s (TCB, strided / upsampling residual block, last conv)."""
    if isinstance(module, ConvTransBlock):
        rule, align = _tcb_rule(module)
        return Stage(module, rule, align)
    if isinstance(module, ResidualBlockWithStride):
        assert module.conv1.stride == (2, 2)
        return Stage(module, chain(strided_conv_step, conv_step(1)), 2, Fraction(1, 2))
    if isinstance(module, ResidualBlockUpsample):  # sub-pixel conv, 3×3 conv; skip: sub-pixel conv
        return Stage(module, chain(conv_step(1), shuffle_step, conv_step(1)), 1, Fraction(2))
    if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
        assert module.kernel_size == (3, 3) and module.padding == (1, 1)
        return Stage(module, strided_conv_step, 2, Fraction(1, 2))
    if isinstance(module, nn.Sequential) and isinstance(module[-1], nn.PixelShuffle):  # subpel_conv3x3
        assert module[-1].upscale_factor == 2
        return Stage(module, chain(conv_step(_conv_radius(module[0])), shuffle_step), 1, Fraction(2))
    raise TypeError(f"no row-band rule for {type(module).__name__}")


def _clamped(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: fn(x).clamp(0, 1)


# An enhancement block's dense buffers hold up to 195 channels at full resolution: its stages compute
# this share of a band at a time, so that they need no more memory than the half-resolution TCBs.
ENH_SHARE = Fraction(1, 2)


def enh_stages(block: EnhBlock, clamp: bool = False) -> List[Stage]:
    """An enhancement block streamed one 3×3 convolution at a time (``x + 0.2 · layers(x)``).

    As one stage the block would compute its whole 11-row context again for every piece; as a stage
    per convolution each repeats only its own row on either side. The maps passed between the stages
    carry the block's input x in their first channels (for the residual), then the dense features,
    and are channels-last on the CPU: oneDNN then convolves them without first copying its input to another
    layout (a copy as large as the input). The last stage returns a contiguous NCHW map.
    """
    db1, *middle, db2 = block.layers
    assert isinstance(db1, DenseBlock) and isinstance(db2, DenseBlock)
    c = db1.conv1.in_channels  # x's channels, carried in front
    dense = (db1.conv1, db1.conv2, db1.conv3, db1.conv4), (db2.conv1, db2.conv2, db2.conv3, db2.conv4)

    def stage(fn: Callable[[Tensor], Tensor], *convs: nn.Conv2d) -> Stage:
        return Stage(fn, conv_step(sum(_conv_radius(conv) for conv in convs)), share=ENH_SHARE)

    def grow(conv: nn.Conv2d, act: nn.Module, skip: int) -> Callable[[Tensor], Tensor]:
        return lambda t: torch.cat((t, act(conv(t[:, skip:]))), dim=1)

    grow_first = grow(db1.conv1, db1.act, 0)

    def first(t: Tensor) -> Tensor:
        return grow_first(onednn_layout(t))

    def middle_layers(t: Tensor) -> Tensor:
        h = t[:, c:]
        for layer in middle:
            h = layer(h)
        return torch.cat((t[:, :c], h), dim=1)

    def last(t: Tensor) -> Tensor:
        x = t[:, :c] + 0.2 * db2.conv5(t[:, c:])
        return (x.clamp(0, 1) if clamp else x).contiguous()

    return [
        stage(first, db1.conv1),
        *(stage(grow(conv, db1.act, 0), conv) for conv in dense[0][1:]),
        stage(lambda t: torch.cat((t[:, :c], db1.conv5(t)), dim=1), db1.conv5),
        stage(middle_layers, *middle),
        *(stage(grow(conv, db2.act, c), conv) for conv in dense[1]),
        stage(last, db2.conv5),
    ]


def transform_stages(layers: nn.Sequential) -> List[Stage]:
    """The layers of g_a or g_s, run on channels-last maps on the CPU: oneDNN convolves those without first
    copying each input to its own layout, and a TCB's Swin half is then a plain NHWC map (no copies
    around its LayerNorms and windows). Measured with ``benchmarks/side_by_side.py``. The last layer
    hands back a contiguous NCHW map, as the layers themselves do."""
    stages = [layer_stage(m) for m in layers]
    first, last = stages[0].fn, stages[-1].fn
    stages[0].fn = lambda t: first(onednn_layout(t))
    stages[-1].fn = lambda t: last(t).contiguous()
    return stages


def onednn_layout(t: Tensor) -> Tensor:
    """Channels-last on the CPU, where oneDNN then convolves without copying its input (above); a GPU
    keeps NCHW (``docs/cuda.md``: not measured against channels-last there)."""
    return t.contiguous(memory_format=torch.channels_last) if t.device.type == "cpu" else t


def analysis_stages(model: nn.Module) -> List[Stage]:
    """x → y: ``enh.forw_enh``, ``inv``, then every layer of ``g_a``."""
    return [*enh_stages(model.enh.forw_enh), *inn_stages(model.inv), *transform_stages(model.g_a)]


def synthesis_stages(model: nn.Module, clamp: bool) -> List[Stage]:
    """ŷ → x̂: every layer of ``g_s``, ``inv.reverse``, ``enh.back_enh`` (with the decoder's clamps)."""
    stages = transform_stages(model.g_s)
    if clamp:
        stages[-1].fn = _clamped(stages[-1].fn)
    return stages + inn_stages(model.inv, reverse=True) + enh_stages(model.enh.back_enh, clamp)


def run_stages(stages: Sequence[Stage], x: Tensor) -> Tensor:
    """The stages on the whole map at once (an image small enough for one band)."""
    for stage in stages:
        x = stage.fn(x)
    return x


# ------------------------------------------------------------------------------ entropy-parameter stages
# The latent's networks stream too (bounded memory for large images): h_mean_s / h_scale_s are layers
# of the kinds above; a slice's SWAtten and mean / scale / LRP networks are cut into the stages below.
# Their bands are counted in latent rows.
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


def _chain_radius(module: nn.Module) -> int:
    """Rows of context of a chain of convolutions (residual units included): their radii add up."""
    return sum(m.kernel_size[0] // 2 for m in module.modules() if isinstance(m, nn.Conv2d))


def swatten_stages(block: nn.Module) -> List[Stage]:
    """SWAtten as three stages over channel-stacked maps: ``t = in_conv(x)`` with the W Swin block
    (→ [t, u]), the SW Swin block (→ [t, s]), then ``out_conv(conv_a(t) · sigmoid(conv_b(s)) + t)``
    (models/blocks.py ``SWAtten.forward``), whose two branches read ``_chain_radius`` rows each."""
    att = block[0] if isinstance(block, nn.Sequential) else block
    assert isinstance(att, SWAtten)
    pair = att.non_local_block
    msa_1, msa_2 = pair.block_1.msa, pair.block_2.msa
    n = att.in_conv.out_channels

    def swin(swin_block: nn.Module, t: Tensor) -> Tensor:
        return swin_block(t.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def first(x: Tensor) -> Tensor:
        t = att.in_conv(x)
        return torch.cat((t, swin(pair.block_1, t)), dim=1)

    def second(tu: Tensor) -> Tensor:
        return torch.cat((tu[:, :n], swin(pair.block_2, tu[:, n:])), dim=1)

    def last(ts: Tensor) -> Tensor:
        t, s = ts[:, :n], ts[:, n:]
        return att.out_conv(att.conv_a(t) * torch.sigmoid(att.conv_b(s)) + t)

    radius = max(_chain_radius(att.conv_a), _chain_radius(att.conv_b))
    return [
        Stage(first, window_step(msa_1.window_size, msa_1.shift), msa_1.window_size),
        Stage(second, window_step(msa_2.window_size, msa_2.shift), msa_2.window_size),
        Stage(last, conv_step(radius)),
    ]


def parameter_net_stages(net: nn.Sequential) -> List[Stage]:
    """A mean / scale / LRP network (3×3 convolutions with GELU between them): one stage per
    convolution, its activation included."""
    stages: List[Stage] = []
    for layer in net:
        if isinstance(layer, nn.Conv2d):
            stages.append(Stage(layer, conv_step(_conv_radius(layer))))
        else:  # a pointwise activation: joins the convolution before it
            stages[-1] = Stage(_then(stages[-1].fn, layer), stages[-1].rule)
    return stages


def _then(fn: Callable[[Tensor], Tensor], after: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: after(fn(x))


def hyper_stages(h_s: nn.Sequential) -> List[Stage]:
    """h_mean_s / h_scale_s: ẑ → latent, every layer a stage (upsampling residual block, TCBs, sub-pixel conv)."""
    return [layer_stage(m) for m in h_s]


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
        self.buffer: Optional[Tensor] = None
        self.start = 0  # input row held in buffer row 0
        self.done = 0  # output rows emitted so far

    @property
    def finished(self) -> bool:
        return self.done == self.out_height

    def feed(self, rows: Optional[Tensor]) -> None:
        """Append input rows; the caller drops its reference, so they exist once."""
        if rows is not None and rows.shape[-2]:
            self.buffer = rows if self.buffer is None else torch.cat((self.buffer, rows), dim=-2)

    def emit(self, last: bool) -> Optional[Tensor]:
        """Up to ``max_rows`` output rows that became exact (None while fewer than ``min_rows`` have,
        or none at all once the input is complete)."""
        if self.buffer is None:
            return None
        end = self.start + self.buffer.shape[-2]
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
        out = self.stage.fn(self.buffer[..., :end - self.start, :])
        first = int(self.start * self.stage.scale)
        emitted = out[..., self.done - first:hi - first, :]
        if emitted.shape[-2] < out.shape[-2]:
            emitted = emitted.clone()  # a view would keep all of ``out`` alive downstream
        self.done = hi
        keep = self.stage.context_start(hi, self.height)
        self.buffer = None if self.finished else self.buffer[..., keep - self.start:, :].clone()
        self.start = keep
        return emitted

    def _input_end(self, rows_out: int, end: int) -> int:
        """The first input row end (≤ ``end``) from which output rows up to ``rows_out`` are exact."""
        q = min(end, max(self.start + 1, int(rows_out / self.stage.scale)))
        while q < end and self.stage.exact(self.start, q, self.height)[1] < rows_out:
            q += 1
        return q


def _pump(streams: Sequence[_StageStream], box: List[Tensor], last: bool, sink: Callable[[Tensor], None]) -> None:
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
