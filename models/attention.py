"""Window attention and the Swin block used by every transformer part of ICWEM.

Shape convention: these modules work on channels-last maps ``B×H×W×C``; conversions from and to
``B×C×H×W`` happen in the blocks that call them (``models/blocks.py``).

Any map size is accepted. Maps whose sides are not whole windows are padded bottom/right *inside*
the attention (after the block's LayerNorm) and cropped back; padded positions are excluded as keys,
so real tokens attend only to real tokens. For sizes that are whole windows nothing is padded and the
result is exactly the original TCM/ICWEM computation.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from torch import Tensor

# Windows processed per scaled_dot_product_attention call: bounds the logits materialised at once
# (windows × heads × w² × w² floats) so large images need little memory.
WINDOW_CHUNK = 512
# Outside autograd, the MLP's 4×-wide hidden layer is computed this many tokens at a time.
MLP_CHUNK_TOKENS = 1 << 16
# Map sizes whose masks a block keeps; beyond that the cache starts again (bounds its memory).
MASK_CACHE_SIZES = 8
# Added to the logit of a blocked (query, key) pair. Finite in every type attention runs in, float16
# included (largest 65504; autocast hands the mask to fp16 attention, where float32's most negative
# value became -inf), with room for the logit and the bias to be added without overflow: a padded
# query whose keys are all blocked gets a finite (discarded) output instead of NaN. exp(-2^15) is 0 in
# every float type, so the rows of real queries come out exactly as with -inf.
MASKED_LOGIT = -(2.0**15)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside non-overlapping ``w×w`` windows (W) or shifted windows (SW).

    Parameter names (``embedding_layer``, ``relative_position_params``, ``linear``) are those of the
    published checkpoints. The relative-position index and the shift/padding masks depend only on the
    map size, so they are built once per size and cached, on the device: a forward pass asks the
    device nothing (no host synchronisation), whatever the map size.
    """

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"attention width {dim} is not a multiple of head_dim {head_dim}")
        self.dim = dim
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.window_size = window_size
        self.shift = window_size // 2 if shifted else 0
        self.embedding_layer = nn.Linear(dim, 3 * dim)
        self.linear = nn.Linear(dim, dim)

        span = 2 * window_size - 1
        params = torch.zeros(span * span, self.num_heads)
        trunc_normal_(params, std=0.02)
        # Created as ((2w-1)², heads) and stored as (heads, 2w-1, 2w-1), like the original.
        self.relative_position_params = nn.Parameter(params.view(span, span, self.num_heads).permute(2, 0, 1).contiguous())
        self.register_buffer("relative_index", _relative_index(window_size), persistent=False)
        self._mask_cache: Dict[Tuple, List[Optional[Tuple[Tensor, Tensor]]]] = {}

    def relative_bias(self) -> Tensor:
        """Bias added to the logits, ``heads × w² × w²`` (query row, key column)."""
        heads = self.num_heads
        return self.relative_position_params.view(heads, -1)[:, self.relative_index]

    def forward(self, x: Tensor) -> Tensor:
        B, H, W, C = x.shape
        w, s = self.window_size, self.shift
        pad_h, pad_w = (-H) % w, (-W) % w
        if pad_h or pad_w:
            x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
        Hp, Wp = H + pad_h, W + pad_w
        if s:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))

        nh, nw = Hp // w, Wp // w
        windows = x.view(B, nh, w, nw, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, nh * nw, w * w, C)
        out = self._attend(windows, self._masks(H, W, x.device, x.dtype))
        out = out.view(B, nh, nw, w, w, C).permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)

        if s:
            out = torch.roll(out, shifts=(s, s), dims=(1, 2))
        if pad_h or pad_w:
            out = out[:, :H, :W, :]
        return out

    def _attend(self, windows: Tensor, masks: List[Optional[Tuple[Tensor, Tensor]]]) -> Tensor:
        """Attention over ``B × nW × L × C`` windows, a chunk of windows at a time.

        Every window gets the relative-position bias (broadcast, never copied); only the few windows
        that ``masks`` lists for a chunk (last window row/column of a shifted or padded map) are redone
        with their mask added, instead of materialising bias + mask for all windows.
        """
        B, nW, L, C = windows.shape
        heads, hd = self.num_heads, self.head_dim
        bias = self.relative_bias().to(windows.dtype).unsqueeze(0)  # 1 × heads × L × L
        out = windows.new_empty(B, nW, L, C)
        for start, chunk_masks in zip(range(0, nW, WINDOW_CHUNK), masks):
            stop = min(start + WINDOW_CHUNK, nW)
            n = stop - start
            # Channel layout of the projection: [q of all heads, k of all heads, v of all heads].
            qkv = self.embedding_layer(windows[:, start:stop]).view(B, n, L, 3, heads, hd).permute(3, 0, 1, 4, 2, 5)
            q, k, v = qkv.reshape(3, B * n, heads, L, hd).unbind(0)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).view(B, n, heads, L, hd)
            if chunk_masks is not None:
                local, mask = chunk_masks
                pick = lambda t: t.view(B, n, heads, L, hd)[:, local].reshape(-1, heads, L, hd)
                m = (bias + mask).repeat(B, 1, 1, 1)
                redone = F.scaled_dot_product_attention(pick(q), pick(k), pick(v), attn_mask=m).view(B, -1, heads, L, hd)
                # In place only outside autograd: the attention backward may have saved ``o``.
                o = o.index_copy_(1, local, redone) if not torch.is_grad_enabled() else o.index_copy(1, local, redone)
            # Heads re-joined head-major (channel = head · head_dim + c) before the output projection,
            # written straight into ``out`` (one copy, not a reshaped temporary and then a second).
            out[:, start:stop].view(B, n, L, heads, hd).copy_(o.transpose(2, 3))
        return self.linear(out)

    def _masks(self, H: int, W: int, device: torch.device, dtype: torch.dtype) -> List[Optional[Tuple[Tensor, Tensor]]]:
        """Per chunk of ``WINDOW_CHUNK`` windows: the chunk-local indices of its windows that need a mask
        (shift wrap-around, padded keys) and their additive masks ``n × 1 × L × L`` (0 or ``MASKED_LOGIT``),
        or None where none does. Only those windows are stored (the last window row and column of a
        map), already on ``device``, so ``_attend`` picks them without reading anything back from it."""
        key = (H, W, device, dtype)
        cached = self._mask_cache.get(key)
        if cached is None:
            if len(self._mask_cache) >= MASK_CACHE_SIZES:
                self._mask_cache.clear()  # row-band inference meets a few band heights per map
            w = self.window_size
            num_windows = -(-H // w) * -(-W // w)
            cached = [None] * -(-num_windows // WINDOW_CHUNK)
            # Normal tensors even when first met under inference mode: training may index with them later.
            with torch.inference_mode(False):
                found = _blocked_pairs(H, W, w, self.shift)
                for k in range(len(cached) if found is not None else 0):
                    windows, blocked = found
                    start = k * WINDOW_CHUNK
                    here = (windows >= start) & (windows < start + WINDOW_CHUNK)
                    if here.any():
                        mask = torch.zeros(blocked[here].shape, dtype=dtype).masked_fill_(blocked[here], MASKED_LOGIT)
                        cached[k] = ((windows[here] - start).to(device), mask.unsqueeze(1).to(device))
            self._mask_cache[key] = cached
        return cached


def _relative_index(w: int) -> Tensor:
    """Flat index into the (2w-1)² bias table: entry (p, q) = (i_p - i_q + w - 1)·(2w-1) + (j_p - j_q + w - 1)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")).flatten(1)  # 2 × L
    rel = coords[:, :, None] - coords[:, None, :] + (w - 1)
    return rel[0] * (2 * w - 1) + rel[1]


def _blocked_pairs(H: int, W: int, w: int, shift: int) -> Optional[Tuple[Tensor, Tensor]]:
    """The windows with a blocked pair, and a boolean ``n × L × L`` for them: True where query p may
    not attend to key q; None if nothing is blocked.

    Two reasons block a pair: (1) in shifted windows, tokens that were wrapped around by the cyclic
    shift and tokens that were not (the standard Swin mask for shift w/2); (2) the key is padding.
    """
    Hp, Wp = H + (-H) % w, W + (-W) % w
    if shift == 0 and Hp == H and Wp == W:
        return None
    # Region labels on the padded, rolled map: 0 everywhere, 1/2 for the two halves of the last window
    # row (resp. column), which the cyclic shift glued together from opposite image borders.
    rows = torch.zeros(Hp, dtype=torch.long)
    cols = torch.zeros(Wp, dtype=torch.long)
    if shift:
        rows[Hp - w:Hp - shift], rows[Hp - shift:] = 1, 2
        cols[Wp - w:Wp - shift], cols[Wp - shift:] = 1, 2
    region = rows[:, None] * 3 + cols[None, :]
    # Padding positions (bottom/right of the unrolled map), rolled exactly like the features.
    valid = torch.zeros(Hp, Wp, dtype=torch.bool)
    valid[:H, :W] = True
    if shift:
        valid = torch.roll(valid, shifts=(-shift, -shift), dims=(0, 1))

    def to_windows(t: Tensor) -> Tensor:
        return t.view(Hp // w, w, Wp // w, w).permute(0, 2, 1, 3).reshape(-1, w * w)

    region_w, valid_w = to_windows(region), to_windows(valid)
    windows = ((region_w != region_w[:, :1]).any(1) | ~valid_w.all(1)).nonzero().flatten()
    region_w, valid_w = region_w[windows], valid_w[windows]
    blocked = region_w[:, :, None] != region_w[:, None, :]
    blocked |= ~valid_w[:, None, :]
    return windows, blocked


class SwinBlock(nn.Module):
    """Pre-norm transformer block: ``x + msa(ln1(x))`` then ``x + mlp(ln2(x))`` (channels-last)."""

    def __init__(self, dim: int, head_dim: int, window_size: int, shifted: bool, drop_path: float = 0.0) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.msa = WindowAttention(dim, head_dim, window_size, shifted)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.msa(self.ln1(x)))
        B, H, W, C = x.shape
        if torch.is_grad_enabled():
            return x + self.drop_path(self.mlp(self.ln2(x)))
        if B * H * W <= MLP_CHUNK_TOKENS:
            return x + self._mlp_inference(self.ln2(x))
        # Inference on a large map: bands of rows bound the hidden layer's memory. ``x`` is the fresh
        # result of the addition above, so updating it in place touches nobody else's tensor.
        rows = max(1, MLP_CHUNK_TOKENS // (B * W))
        for r in range(0, H, rows):
            band = x[:, r:r + rows]
            band += self._mlp_inference(self.ln2(band))
        return x

    def _mlp_inference(self, t: Tensor) -> Tensor:
        """The MLP outside autograd; on the CPU in float32 the first linear and its GELU run as one
        oneDNN call (GELU as the matmul's post-op: the 4×-wide hidden layer is written once instead of
        written, read and written again). Same values (GELU erf form, same product)."""
        fc1, act, fc2 = self.mlp
        if not _fused_gelu_ok(t, fc1.weight):
            return self.mlp(t)
        h = torch.ops.mkldnn._linear_pointwise(t.reshape(-1, t.shape[-1]), fc1.weight, fc1.bias, "gelu", [], "none")
        return fc2(h).view(*t.shape[:-1], -1)


def _fused_gelu_ok(t: Tensor, weight: Tensor) -> bool:
    """Whether oneDNN's linear + GELU can replace Linear then GELU here (CPU, float32, no autocast)."""
    return (
        _FUSED_LINEAR_GELU
        and t.device.type == "cpu"
        and t.dtype == weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
    )


# Stays in the library: not every PyTorch build has oneDNN's fused op, and without it the MLP runs unfused.
_FUSED_LINEAR_GELU = hasattr(torch.ops.mkldnn, "_linear_pointwise")
