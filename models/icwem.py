"""ICWEM: Invertible Channel-Wise Entropy Model (feature attention + INN around TCM transforms)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.models import CompressionModel
from compressai.ops import quantize_ste
from torch import Tensor

from utils.device import cpu_computes_natively, full_float32

from .blocks import (
    ParameterNet, StridedConv, StridedResidualBlock, SubpelConv, SWAtten, Transform, UpsamplingResidualBlock, tcb_stage,
)
from .config import ModelConfig
from .enhance import EnhModule
from .inn import InvertibleNetwork
from .entropy import (
    CHUNK_SYMBOLS, LEGACY_HINT, PORTABLE_DTYPE, ChunkedDecoder, ChunkedEncoder, CoderCheck, ForeignStrings,
    check_z_strings, guarded, legacy_coders, parameter_device, parameter_nets, rans_tables, release_parameter_nets,
    scale_indexes, update_tables, z_symbols,
)
from .tiling import Stage, band_rows, in_onednn_layout, latent_band_rows, run_stages, stream_rows, then
from .variable_rate import RateGain, check_quality, coder_domain, dequantize, slice_gains

# Buffers that update() derives from the parameters; left out of the fingerprint so that it does not
# depend on whether update() has run.
_CODER_TABLES = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def bf16_native(device: str = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 natively: on a CPU, AVX512-BF16 or AMX (Linux
    /proc/cpuinfo flags); on CUDA, ``torch.cuda.is_bf16_supported``. Elsewhere bf16 is emulated and
    several times slower than float32, so ``ICWEM.bf16_transforms`` only pays where this is True."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_computes_natively("bf16")


def _full_precision(t: Tensor) -> contextlib.AbstractContextManager:
    """Autocast off on ``t``'s device: what runs inside computes in its inputs' own dtype."""
    return torch.autocast(t.device.type, enabled=False)


def _float32(t: Tensor) -> Tensor:
    """``t`` in float32 if it is in a 16-bit float type (what autocast produced); else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _clamp01(x: Tensor, straight_through: bool) -> Tensor:
    """Clamp to [0, 1]; with ``straight_through`` the gradient passes as if there were no clamp."""
    clamped = x.clamp(0, 1)
    return x + (clamped - x).detach() if straight_through else clamped


class ICWEM(CompressionModel):
    r"""Invertible Channel-Wise Entropy Model for learned image compression.

    A Transformer-CNN (TCM) analysis/synthesis pair, wrapped by a feature-attention block and an
    invertible network on each side, with a hyper-prior and a channel-wise autoregressive entropy
    model (SWAtten attention + latent residual prediction), coded with CompressAI's rANS coder::

        x ─ enh.forw_enh ─ inv ─ g_a ─ y ─ h_a ─ z ─ entropy_bottleneck ─ ẑ
                                      │                                   ├─ h_mean_s ─ latent means
                                      │                                   └─ h_scale_s ─ latent scales
                                      └─ slices y_0 … y_{S-1}: (μ_i, σ_i) from SWAtten + cc_*_transforms
                                         ŷ_i = round(y_i − μ_i) + μ_i + LRP_i ─ ŷ
        ŷ ─ g_s ─ inv⁻¹ ─ enh.back_enh ─ x̂

    Args (fields of :class:`~models.config.ModelConfig`, given as keyword overrides):
        N: half the width of the main transforms (each TCB has a conv half and a transformer half of N).
        M: channels of the latent y.
        Z: channels of the hyper-latent z.
        num_slices: number of equal channel slices of y.
        max_support_slices: how many decoded slices condition the next (< 0: all previous).
        depths: TCBs in the 3 analysis and 3 synthesis stages (h_a uses depths[0], h_*_s depths[3]).
        head_dims: attention head width per stage (heads = N / head_dim).
        window_size: attention window in g_a / g_s.
        hyper_window_size, hyper_head_dim: attention window / head width in h_a and h_*_s.
        attn_dim, attn_head_dim, attn_window_size: SWAtten's inner width, head width and window.
        param_hidden: hidden widths of the per-slice mean / scale / LRP networks.
        enh_channels: width of the feature-attention blocks.
        dense_growth: growth channels of their dense blocks.
        drop_path_rate: stochastic depth over the g_a / g_s TCBs (linearly increasing), training only.
        rate_points, rate_gain: 0 (fixed rate), or K ≥ 2 learned rate points of a gain on y, per channel
            or scalar: a variable-rate model whose ``forward``, ``compress`` and ``decompress`` take a
            ``quality`` in [1, K] (models/variable_rate.py).

    Inputs are ``B×3×H×W`` in [0, 1] with H and W multiples of :attr:`downsampling_factor` (64);
    ``utils.padding`` pads arbitrary images to that.
    """

    downsampling_factor = 64
    # Inference (``inference=True``: coding) runs analysis and synthesis in full-width bands of this many image
    # rows (models/tiling.py); None: bands of about tiling.BAND_PIXELS pixels on a CPU, the whole image
    # on a GPU (bands only if it would not fit); 0: always the whole image. Not part of the
    # configuration: it changes no value beyond float rounding, no bitstream.
    tile: Optional[int] = None
    # Run the main transforms (enh, INN, g_a, g_s) of inference in bfloat16 autocast. Off by
    # default: it pays only where the CPU computes bf16 natively (:func:`bf16_native`), and it changes
    # x̂ and y by bf16 rounding (the entropy-parameter path stays float64, so files stay portable).
    bf16_transforms: bool = False
    # The entropy-parameter networks (h_*_s, SWAtten, mean / scale / LRP) stream over bands of this many
    # latent rows; None: about tiling.LATENT_BAND_PIXELS latent pixels on a CPU, the whole latent on a
    # GPU (as ``tile``); 0 whenever ``tile`` is 0.
    latent_tile: Optional[int] = None
    # The rate-distortion λ (MSE) the weights were trained for, where the checkpoint records it
    # (``load_checkpoint`` sets it): encode-time refinement's trade-off (models/refine.py). None: unknown.
    lmbda: Optional[float] = None

    def __init__(self, config: Optional[ModelConfig] = None, **overrides) -> None:
        """``ICWEM()`` is the published model; ``ICWEM(**get_config("tiny"))`` or ``ICWEM(N=64)`` override
        fields of :class:`~models.config.ModelConfig` (the one place the defaults are written)."""
        super().__init__()
        cfg = replace(config or ModelConfig(), **overrides)
        self.config = cfg.as_dict()
        N, M, Z, num_slices, max_support_slices = cfg.N, cfg.M, cfg.Z, cfg.num_slices, cfg.max_support_slices
        depths, head_dims, window_size, param_hidden = cfg.depths, cfg.head_dims, cfg.window_size, cfg.param_hidden
        hyper_window_size, hyper_head_dim = cfg.hyper_window_size, cfg.hyper_head_dim
        attn_dim, attn_head_dim, attn_window_size = cfg.attn_dim, cfg.attn_head_dim, cfg.attn_window_size
        enh_channels, dense_growth, drop_path_rate = cfg.enh_channels, cfg.dense_growth, cfg.drop_path_rate
        self.num_slices = num_slices
        self.max_support_slices = max_support_slices
        C = 2 * N
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stage_dpr = [dpr[sum(depths[:s]):sum(depths[:s + 1])] for s in range(6)]

        def stage(s: int) -> List[nn.Module]:
            return tcb_stage(N, depths[s], head_dims[s], window_size, stage_dpr[s])

        self.entropy_bottleneck = EntropyBottleneck(Z)
        self.g_a = Transform(
            StridedResidualBlock(3, C, stride=2), *stage(0),
            StridedResidualBlock(C, C, stride=2), *stage(1),
            StridedResidualBlock(C, C, stride=2), *stage(2),
            StridedConv(C, M),
        )
        self.g_s = Transform(
            UpsamplingResidualBlock(M, C, 2), *stage(3),
            UpsamplingResidualBlock(C, C, 2), *stage(4),
            UpsamplingResidualBlock(C, C, 2), *stage(5),
            SubpelConv(C, 3, 2),
        )
        self.enh = EnhModule(enh_channels, dense_growth)
        self.inv = InvertibleNetwork()

        self.h_a = Transform(
            StridedResidualBlock(M, C, stride=2),
            *tcb_stage(N, depths[0], hyper_head_dim, hyper_window_size),
            StridedConv(C, Z),
        )

        def hyper_synthesis() -> Transform:
            return Transform(
                UpsamplingResidualBlock(Z, C, 2),
                *tcb_stage(N, depths[3], hyper_head_dim, hyper_window_size),
                SubpelConv(C, M, 2),
            )

        self.h_mean_s = hyper_synthesis()
        self.h_scale_s = hyper_synthesis()

        slice_ch = M // num_slices
        support_ch = [M + slice_ch * self._num_support(i) for i in range(num_slices)]

        def swatten(ch: int) -> Transform:
            return Transform(SWAtten(ch, ch, attn_dim, attn_head_dim, attn_window_size))

        self.atten_mean = nn.ModuleList(swatten(ch) for ch in support_ch)
        self.atten_scale = nn.ModuleList(swatten(ch) for ch in support_ch)
        self.cc_mean_transforms = nn.ModuleList(ParameterNet(ch, param_hidden, slice_ch) for ch in support_ch)
        self.cc_scale_transforms = nn.ModuleList(ParameterNet(ch, param_hidden, slice_ch) for ch in support_ch)
        self.lrp_transforms = nn.ModuleList(ParameterNet(ch + slice_ch, param_hidden, slice_ch) for ch in support_ch)
        self.gaussian_conditional = GaussianConditional(None)
        self.rate_points = cfg.rate_points
        if cfg.rate_points:  # only a variable-rate model has it: fixed-rate state dicts are unchanged
            self.rate_gain = RateGain(cfg.rate_points, M if cfg.rate_gain == "channel" else 1)

    # ------------------------------------------------------------------ shared pieces
    def _num_support(self, i: int) -> int:
        """How many decoded slices condition slice i."""
        return i if self.max_support_slices < 0 else min(i, self.max_support_slices)

    @property
    def default_quality(self) -> Optional[float]:
        """The middle of a variable-rate model's qualities [1, K]; None for a fixed-rate model."""
        return (1 + self.rate_points) / 2 if self.rate_points else None

    def _quality(self, quality: Optional[float]) -> Optional[float]:
        """The quality to code at: ``quality`` (None: ``default_quality``) for a variable-rate model; None
        for a fixed-rate model, which refuses one."""
        if not self.rate_points:
            if quality is not None:
                raise ValueError("a quality is for variable-rate models; this model is fixed-rate")
            return None
        return check_quality(self.default_quality if quality is None else quality, self.rate_points)

    def _slice_gains(self, quality: Optional[float], like: Tensor, coding: bool = False) -> List[Optional[Tensor]]:
        """Per slice, y's gain at ``quality`` (see ``_quality``) in ``like``'s dtype and device; all None
        for a fixed-rate model. ``coding``: computed on the CPU (``RateGain.log_gains``), as every decoder
        will compute it."""
        quality = self._quality(quality)
        if quality is None:
            return slice_gains(None, self.num_slices, like)
        return slice_gains(self.rate_gain(quality, torch.device("cpu") if coding else None), self.num_slices, like)

    def _band_rows(self, height: int, width: int, device: Optional[torch.device] = None) -> int:
        """Image rows per band for this image size on ``device`` (default the CPU); 0: whole (it fits in
        one band)."""
        rows = band_rows(self.tile, width, device)
        return rows if 0 < rows < height else 0

    def analysis(self, x: Tensor, inference: bool = True) -> Tensor:
        """x → y: feature attention, INN, then g_a.

        ``inference`` (what ``compress`` runs): the blocks' stages on channels-last maps on the CPU, in
        row bands for a large image (``tile``), in bf16 with ``bf16_transforms``; False (training): the
        same blocks on the whole NCHW map, as autograd needs them. Both give y to float rounding.
        """
        self._check_size(x)
        if not inference:
            return self.g_a(self.inv(self.enh.forw_enh(x)))
        rows = self._band_rows(*x.shape[-2:], x.device)
        with self._transform_precision(x):
            stages = self.analysis_stages()
            y = stream_rows(stages, x, rows) if rows else run_stages(stages, x)
        return y.to(x.dtype) if self.bf16_transforms else y

    def synthesis(self, y_hat: Tensor, clamp: bool = False, inference: bool = True) -> Tensor:
        """ŷ → x̂: g_s, INN reverse, feature attention. ``clamp`` reproduces the decoder's two clamps;
        ``inference`` as for :meth:`analysis`."""
        if not inference:
            x = self.g_s(y_hat)
            x = self.enh.back_enh(self.inv.reverse(x.clamp(0, 1) if clamp else x))
            return x.clamp(0, 1) if clamp else x
        f = self.downsampling_factor // 4  # image pixels per pixel of y (16)
        rows = self._band_rows(y_hat.shape[-2] * f, y_hat.shape[-1] * f, y_hat.device)
        with self._transform_precision(y_hat):
            stages = self.synthesis_stages(clamp)
            x = stream_rows(stages, y_hat, rows, unit=f) if rows else run_stages(stages, y_hat)
        return x.to(y_hat.dtype) if self.bf16_transforms else x

    def analysis_stages(self) -> List[Stage]:
        """x → y as the stages the row-band engine runs: ``enh.forw_enh``, ``inv``, ``g_a``, the first and
        the last on channels-last maps on the CPU (``tiling.in_onednn_layout``)."""
        return [*in_onednn_layout(self.enh.forw_enh.stages()), *self.inv.stages(), *in_onednn_layout(self.g_a.stages())]

    def synthesis_stages(self, clamp: bool) -> List[Stage]:
        """ŷ → x̂ as stages: ``g_s``, ``inv.reverse``, ``enh.back_enh`` (with the decoder's clamps)."""
        g_s = in_onednn_layout(self.g_s.stages())
        if clamp:
            g_s[-1] = then(g_s[-1], lambda t: t.clamp(0, 1))
        return [*g_s, *self.inv.stages(reverse=True), *in_onednn_layout(self.enh.back_enh.stages(clamp))]

    def _transform_precision(self, t: Tensor) -> contextlib.AbstractContextManager:
        """bf16 autocast for the main transforms of inference when ``bf16_transforms`` is set."""
        if self.bf16_transforms:
            return torch.autocast(t.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def hyper_synthesis(self, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        return self.h_mean_s(z_hat), self.h_scale_s(z_hat)

    def _latent_rows(self, height: int, width: int, device: Optional[torch.device] = None) -> int:
        """Latent rows per band of the entropy-parameter networks on ``device`` (default the CPU); 0:
        whole (one band)."""
        rows = self.latent_tile if self.latent_tile is not None else latent_band_rows(self.tile, width, device)
        return rows if 0 < rows < height else 0

    def _hyper(self, nets: nn.Module, z_hat: Tensor) -> Tuple[Tensor, Tensor]:
        """``nets.hyper_synthesis(ẑ)``, streamed over latent rows for a large latent (same values)."""
        f = 4  # latent rows per row of z
        rows = self._latent_rows(z_hat.shape[-2] * f, z_hat.shape[-1] * f, z_hat.device)
        if not rows:
            return nets.hyper_synthesis(z_hat)
        return tuple(stream_rows(h.stages(), z_hat, rows, unit=f) for h in (nets.h_mean_s, nets.h_scale_s))

    @staticmethod
    def _run_nets(nets: Sequence[nn.Module], inputs: Sequence[Tensor], rows: int) -> Tensor:
        """The networks ``nets`` in sequence on the channel concatenation of ``inputs``; with ``rows``,
        streamed over bands of that many latent rows (models/tiling.py), so that their inner maps
        exist one band at a time and equal the whole latent's to float rounding."""
        stages = [stage for net in nets for stage in net.stages()]
        if rows:
            return stream_rows(stages, inputs, rows)
        return run_stages(stages, inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1))

    def _code_slices(
        self,
        latent_means: Tensor,
        latent_scales: Tensor,
        y_hw: Tuple[int, int],
        quantize: Callable[[int, Tensor, Tensor], Tensor],
        nets: Optional[nn.Module] = None,
        keep_parameters: bool = True,
        y_hat_dtype: Optional[torch.dtype] = None,
        rows: int = 0,
    ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """Run the channel-wise entropy model over all slices; returns ŷ, μ and σ (slices concatenated;
        μ and σ are None without ``keep_parameters``: coding needs neither once a slice is coded, and
        on a large latent they would be two more whole-latent float64 maps).

        ``quantize(i, μ_i, σ_i)`` returns the quantised slice ŷ_i (before LRP). It is the only part
        that differs between the forward pass (rounding with likelihoods), compress (symbols to the
        coder) and decompress (symbols from the coder), so the three share this loop. ``nets`` holds the
        SWAtten and mean / scale / LRP networks to run (default: this model's own; real coding passes
        their float64 copy, see :meth:`_parameter_path`). ``y_hat_dtype``: the returned ŷ's dtype (default:
        the slices' own), filled slice by slice so the float64 slices are never concatenated as well.
        ``rows``: stream the networks over bands of that many latent rows (0: the whole latent).
        """
        nets = self if nets is None else nets
        H, W = y_hw
        y_hat_slices: List[Tensor] = []
        means: List[Tensor] = []
        scales: List[Tensor] = []
        for i in range(self.num_slices):
            support = y_hat_slices[: self._num_support(i)]
            mean_in = self._run_nets([nets.atten_mean[i]], [latent_means, *support], rows)
            mu = self._run_nets([nets.cc_mean_transforms[i]], [mean_in], rows)[:, :, :H, :W]
            sigma = self._run_nets([nets.atten_scale[i], nets.cc_scale_transforms[i]], [latent_scales, *support], rows)
            sigma = sigma[:, :, :H, :W]
            y_hat_i = quantize(i, mu, sigma)
            if keep_parameters:
                means.append(mu)
                scales.append(sigma)
            del mu, sigma  # before the LRP network runs: on a large latent each is a 64-channel float64 map
            lrp = self._run_nets([nets.lrp_transforms[i]], [mean_in, y_hat_i], rows)
            y_hat_slices.append(y_hat_i + 0.5 * torch.tanh(lrp))
            del mean_in, y_hat_i, lrp
        out = None
        if y_hat_dtype is not None:  # torch.cat casts into ``out``: no whole float64 ŷ first
            first = y_hat_slices[0]
            out = first.new_empty(first.shape[0], sum(t.shape[1] for t in y_hat_slices), *first.shape[2:], dtype=y_hat_dtype)
        y_hat = torch.cat(y_hat_slices, dim=1, out=out)
        if not keep_parameters:
            return y_hat, None, None
        return y_hat, torch.cat(means, dim=1), torch.cat(scales, dim=1)

    def _check_size(self, x: Tensor) -> None:
        h, w = x.shape[-2:]
        f = self.downsampling_factor
        if h % f or w % f or h == 0 or w == 0:
            raise ValueError(f"input size {h}x{w} is not a multiple of {f}; pad it first (utils.padding)")

    # ------------------------------------------------------------------ training / estimation
    def forward(self, x: Tensor, decoder_clamp: bool = False, inference: bool = False,
                quality: Optional[float] = None) -> Dict:
        """Training / estimation pass (``quality``: a variable-rate model's, see ``_slice_gains``).

        ``inference`` runs the transforms and the entropy-parameter networks as coding does (channels-last,
        in bands for a large image: bounded memory), for an estimate outside autograd; False (training)
        runs them whole, as autograd needs them.

        ``decoder_clamp`` applies the decoder's clamps of g_s's output and of x̂ to [0, 1] (see
        :meth:`synthesis`) with straight-through gradients, so that a model trained with it is scored on
        the picture its decoder will produce, and adds ``range_loss`` (see below); without it (the
        original's training) x̂ is unclamped.

        Under mixed precision (autocast) the networks compute in bf16 / fp16, but the entropy models —
        the bottleneck's cumulative-logit matmuls, the Gaussian likelihoods — and the rounding run in
        float32 with autocast off, on float32 copies of y, z, μ and σ: the rate term is as exact as in
        a float32 run, and a likelihood cannot underflow to 0 (an infinite rate) in 16 bits.
        """
        y = self.analysis(x, inference)
        y_hat, out = self.entropy_pass(y, quality, inference)
        if not decoder_clamp:
            out["x_hat"] = self.synthesis(y_hat, inference=inference)
            return out
        # The decoder clamps g_s's output before the inverse INN: what falls outside [0, 1] there is lost.
        # The straight-through clamp lets the loss see that picture; range_loss (the squared distance of
        # g_s's output to [0, 1]) pulls g_s's output, and with it the INN's domain, into that range.
        g = self.g_s(y_hat)
        out["range_loss"] = (g - g.detach().clamp(0, 1)).square().mean()
        out["x_hat"] = _clamp01(self.enh.back_enh(self.inv.reverse(_clamp01(g, True))), True)
        return out

    def entropy_pass(self, y: Tensor, quality: Optional[float] = None, inference: bool = False) -> Tuple[Tensor, Dict]:
        """y → (ŷ, {"likelihoods", "para"}): the hyper-prior and the channel-wise entropy model between the
        transforms of :meth:`forward`, rounding straight through. Alone, it is what
        ``utils/training/entropy_stage.py`` trains the entropy model with, on latents of whole pictures."""
        z = self.h_a(y)
        with _full_precision(z):
            z = _float32(z)
            _, z_likelihoods = self.entropy_bottleneck(z)
            z_medians = self.entropy_bottleneck._get_medians()
            z_hat = quantize_ste(z - z_medians) + z_medians
        latent_means, latent_scales = self.hyper_synthesis(z_hat)

        y_slices = _float32(y).chunk(self.num_slices, dim=1)
        gains = self._slice_gains(quality, y_slices[0])
        y_likelihoods: List[Tensor] = []

        def round_slice(i: int, mu: Tensor, sigma: Tensor) -> Tensor:
            with _full_precision(mu):
                mu, sigma = _float32(mu), _float32(sigma)
                y_c, mu_c, sigma_c = coder_domain(gains[i], y_slices[i], mu, sigma)
                _, likelihood = self.gaussian_conditional(y_c, sigma_c, means=mu_c)
                y_likelihoods.append(likelihood)
                return dequantize(gains[i], quantize_ste(y_c - mu_c), mu)

        rows = self._latent_rows(*y.shape[-2:], y.device) if inference else 0
        y_hat, means, scales = self._code_slices(latent_means, latent_scales, y.shape[-2:], round_slice, rows=rows)
        return y_hat, {
            "likelihoods": {"y": torch.cat(y_likelihoods, dim=1), "z": z_likelihoods},
            "para": {"means": means, "scales": scales, "y": y},
        }

    # ------------------------------------------------------------------ real entropy coding
    # Real coding computes the entropy parameters portably (float64, models/entropy/parameters.py), so a
    # file decodes on any machine. Where: None picks for the model's device (the CPU, or its GPU where
    # float64 is faster there: entropy.parameter_device); "cpu" or "model" (the model's device) force it.
    # Files do not depend on it.
    parameter_device: Optional[str] = None

    def update(self, scale_table=None, force: bool = False, update_quantiles: bool = False) -> bool:
        """Build the entropy coder tables, from float64 pmfs on the pinned scale table (models/entropy/tables.py)."""
        if scale_table is not None:
            raise ValueError("ICWEM's scale table is pinned (models/entropy/tables.py SCALE_TABLE) so files decode anywhere")
        return update_tables(self, force=force, update_quantiles=update_quantiles)

    def _parameter_path(self, z_hat: Tensor) -> Tuple[nn.Module, Tensor]:
        """The networks that decide the coder's inputs, and ẑ in the dtype and on the device they run."""
        choice = {None: parameter_device(z_hat.device), "cpu": torch.device("cpu"), "model": z_hat.device}
        device = choice[self.parameter_device]
        return parameter_nets(self, device), z_hat.to(device, PORTABLE_DTYPE)

    @full_float32()  # no TF32 on a GPU: its pictures then differ from a CPU's by float32 rounding only
    def compress(self, x: Tensor, return_y_hat: bool = False, chunk_symbols: Optional[int] = CHUNK_SYMBOLS,
                 quality: Optional[float] = None) -> Dict:
        """Code each image of the batch into one y string (all slices) and one z string.

        y's symbols go to the coder slice by slice, in independent rANS streams of ``chunk_symbols``
        symbols (``models/entropy/rans_chunks.py``; None: one stream). ``checks`` holds, per image, the
        CRC-32 of the symbols and scale indexes the decoder must rebuild (``entropy.CoderCheck``);
        ``return_y_hat`` also returns the encoder's own ŷ. ``quality``: a variable-rate model's (the
        decoder needs the same), see ``_slice_gains``.
        """
        rans_tables(self.gaussian_conditional)  # fails before the analysis, not after it
        self._quality(quality)  # so does a quality the model cannot take
        y = self.analysis(x)
        del x  # a caller that passes the image without keeping it (encode_image) frees it for the coding
        return self.compress_latents(y, None, return_y_hat, chunk_symbols, quality)

    def compress_latents(self, y: Tensor, z: Optional[Tensor] = None, return_y_hat: bool = False,
                         chunk_symbols: Optional[int] = CHUNK_SYMBOLS, quality: Optional[float] = None) -> Dict:
        """What :meth:`compress` does after its analysis transform: code the latent ``y`` and the
        hyper-latent ``z`` (default ``h_a(y)``). Encode-time refinement (models/refine.py) passes its own
        y and z here, so a refined file goes through the same portable parameters, coder check and
        format as a plain one, and any decoder reads it."""
        tables = rans_tables(self.gaussian_conditional)
        batch = y.shape[0]
        z = self.h_a(y) if z is None else z
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        nets, z_in = self._parameter_path(z_hat)
        latent_means, latent_scales = self._hyper(nets, z_in)

        y_slices = y.chunk(self.num_slices, dim=1)  # each made float64 when coded, not the whole latent
        gains = self._slice_gains(quality, z_in, coding=True)
        z_q = z_symbols(self.entropy_bottleneck, z_hat)
        checks = [CoderCheck(z_q[b], self._quality(quality)) for b in range(batch)]
        encoders = [ChunkedEncoder(tables, chunk_symbols) for _ in range(batch)]

        def code_slice(i: int, mu: Tensor, sigma: Tensor) -> Tensor:
            y_c, mu_c, sigma_c = coder_domain(gains[i], y_slices[i].to(mu.device, mu.dtype), mu, sigma)
            q = self.gaussian_conditional.quantize(y_c, "symbols", mu_c)
            index = scale_indexes(sigma_c)
            for b, (encoder, check) in enumerate(zip(encoders, checks)):
                encoder.encode(q[b], index[b])  # one stream per image: slice order, then C order
                check.add(q[b], index[b])
            return dequantize(gains[i], q, mu)

        rows = self._latent_rows(*y.shape[-2:], z_in.device)
        y_hat, _, _ = self._code_slices(latent_means, latent_scales, y.shape[-2:], code_slice, nets, False, z_hat.dtype,
                                        rows)
        out = {"strings": [[e.finish() for e in encoders], z_strings], "shape": z.shape[-2:],
               "checks": [c.value() for c in checks]}
        if return_y_hat:
            out["y_hat"] = y_hat.to(z_hat.device, z_hat.dtype)
        return out

    @full_float32()
    def decompress(self, strings: Sequence[Sequence[bytes]], shape: Sequence[int], legacy: bool = False,
                   chunk_symbols: Optional[int] = CHUNK_SYMBOLS, quality: Optional[float] = None) -> Dict:
        """Inverse of :meth:`compress`: rebuilds the same entropy parameters and decodes ŷ, then x̂.

        Every string is checked and each rANS stream given a zero guard first (``entropy.rans_guard``),
        so no input makes the decoder read memory that is not ours; ``checks`` are the CRCs of what was
        decoded, to compare with the encoder's. ``chunk_symbols`` must be the encoder's (None for a
        single y stream). ``legacy`` decodes strings coded before the portable path (the original
        implementation's): float32 parameters and CompressAI's own tables, as their encoder had them.
        Without it such strings raise ``ForeignStrings`` (a ``ValueError``), as does any decode that
        gives a picture with NaN. Which file versions need which options: ``utils.coding.codec``.
        ``quality``: the encoder's (a variable-rate model's, see ``_slice_gains``).
        """
        self._quality(quality)  # a quality the model cannot take fails before any work
        eb, gc = legacy_coders(self) if legacy else (self.entropy_bottleneck, self.gaussian_conditional)
        tables = rans_tables(gc)
        y_strings, z_strings = strings
        if len(y_strings) != len(z_strings):
            raise ValueError("y and z strings disagree on the batch size")
        z_h, z_w = (int(side) for side in shape)
        z_count = self.entropy_bottleneck._quantized_cdf.shape[0] * z_h * z_w
        y_hw = (4 * z_h, 4 * z_w)
        y_count = self.config["M"] * y_hw[0] * y_hw[1]
        decoders = [ChunkedDecoder(s, y_count, tables, chunk_symbols) for s in y_strings]  # checked before any work
        z_hat = eb.decompress([guarded(s, z_count, "z") for s in z_strings], (z_h, z_w))
        if not legacy:  # other tables' z strings (the original's) decode to other symbols: refuse them here
            check_z_strings(eb, z_hat, z_strings)
        nets, z_in = (self, z_hat) if legacy else self._parameter_path(z_hat)
        latent_means, latent_scales = self._hyper(nets, z_in)
        z_q = z_symbols(self.entropy_bottleneck, z_hat)
        checks = [CoderCheck(z_q[b], self._quality(quality)) for b in range(len(y_strings))]
        gains = self._slice_gains(quality, z_in, coding=True)

        def decode_slice(i: int, mu: Tensor, sigma: Tensor) -> Tensor:
            (sigma,) = coder_domain(gains[i], sigma)
            index = gc.build_indexes(sigma) if legacy else scale_indexes(sigma)
            q = torch.stack([decoder.decode(index[b]) for b, decoder in enumerate(decoders)]).to(mu.device)
            for b, check in enumerate(checks):
                check.add(q[b], index[b])
            return dequantize(gains[i], q, mu)

        rows = self._latent_rows(*y_hw, z_in.device)
        y_hat, _, _ = self._code_slices(latent_means, latent_scales, y_hw, decode_slice, nets, False, z_hat.dtype, rows)
        del latent_means, latent_scales, nets  # two whole-latent float64 maps, not needed by the synthesis
        # A large image: its synthesis needs the float64 copy's memory (340 MiB for the published model)
        # more than the next coding, which rebuilds it.
        if rows:
            release_parameter_nets(self)
        y_hat = y_hat.to(z_hat.device)
        x_hat = self.synthesis(y_hat, clamp=True)
        if not torch.isfinite(x_hat.sum()):  # x̂ is clamped to [0, 1]: its sum is finite unless a value is NaN
            raise ForeignStrings("decoding gave a picture with NaN: the strings were damaged or written by another coder"
                                 + ("" if legacy else f"; {LEGACY_HINT}"))
        return {"x_hat": x_hat, "y_hat": y_hat, "checks": [c.value() for c in checks]}

    # ------------------------------------------------------------------ identity
    def fingerprint(self) -> bytes:
        """16-byte digest of the configuration and all weights: a bitstream names the model it needs."""
        arch = {k: v for k, v in self.config.items() if k != "drop_path_rate"}  # training-only
        h = hashlib.sha256(json.dumps(arch, sort_keys=True).encode())
        for name, t in self.state_dict().items():
            if name.rsplit(".", 1)[-1] in _CODER_TABLES:
                continue
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.digest()[:16]
