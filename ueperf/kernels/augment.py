"""Fused training augmentation: uint8 NHWC batch → float (N, 3, H, W) channels-last, one pass.

Pipeline, per sample n (fixed order; torchvision's functional definitions, float images):

1. **random crop** (spec §3.0: RandomCrop(size, padding=p)): the image is zero-padded by ``p``
   pixels on every side and an H×W window at offset (dy, dx) ∈ [0, 2p]² is taken::

       crop[i, j] = x[i + dy - p, j + dx - p]   (0 where the index falls outside the image)

2. **horizontal flip**: ``out[i, j] = crop[i, W - 1 - j]`` when ``flip[n]``.
3. **colour jitter** (spec §3.4, CG; applied when ``jitter_on[n]``), factors
   ``(b, c, s, h) = factors[n]``, every step clamped to [0, 1]:

   - brightness: ``x ← clamp(b·x)``
   - contrast:   ``x ← clamp(c·x + (1-c)·m)``, m = mean over the image of gray(x) (after
     brightness, over the whole H×W crop, padded zeros included)
   - saturation: ``x ← clamp(s·x + (1-s)·gray(x))`` (per pixel)
   - hue:        RGB → HSV, ``H ← (H + h) mod 1`` (h in turns), HSV → RGB; skipped when h = 0

   ``gray(x) = 0.299 R + 0.587 G + 0.114 B`` (ITU-R 601-2 luma, PIL's weights; torchvision's
   tensor path uses 0.2989 for R — a 1e-4 difference we do not copy). Unlike torchvision's
   ColorJitter, the order of the four steps is fixed (brightness → contrast → saturation → hue)
   so the Triton kernel and the reference agree without a per-sample permutation.
4. **random grayscale** (spec §3.4, CG): ``x ← gray(x)`` replicated to 3 channels when
   ``gray[n]``.
5. **normalisation** (optional): ``x ← (x - mean[ch]) / std[ch]``.

Units: uint8 input is divided by 255 (IEEE division: bit-equal to ``x.float() / 255`` on CPU);
float input must already be in [0, 1]. Output: logical shape (N, 3, H, W), channels-last memory (= NHWC in memory),
dtype ``out_dtype``.

Contents: :class:`AugmentParams` (per-sample random draws), :func:`sample_params`,
:func:`augment_ref` (plain torch: the spec and the CPU path, differentiable for float input —
protections use it for EOT over augmentations), :func:`augment_triton` (one Triton kernel from
uint8), :func:`augment` (dispatcher), :func:`eval_transform` (the training pipeline built on them is :class:`ueperf.augment.pipeline.Augmenter`)
(AugmentConfig → callable).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Optional, Sequence, Tuple, Union

import torch

from ueperf.errors import ConfigError
from ueperf.kernels._dispatch import use_triton

# ITU-R 601-2 luma weights (PIL's "L" conversion) — see the module docstring.
GRAY_WEIGHTS = (0.299, 0.587, 0.114)

_FloatSeq = Union[Sequence[float], torch.Tensor]


# =====================================================================================
# Parameters: one row of random draws per sample
# =====================================================================================


@dataclass
class AugmentParams:
    """Per-sample augmentation parameters, all on the batch's device.

    Attributes:
        offset: (N, 2) int32 crop offsets (dy, dx) into the zero-padded image, in [0, 2·padding]
            (values outside that range are allowed: they read zeros beyond the image).
        flip: (N,) bool (or int8, nonzero = flip) horizontal flip.
        jitter_on: (N,) bool, apply colour jitter to this sample.
        factors: (N, 4) float32 (brightness b, contrast c, saturation s, hue h); b, c, s are
            multiplicative factors (1 = identity), h is a hue rotation in turns (0 = identity).
        gray: (N,) bool, convert this sample to grayscale (after jitter).
        padding: crop padding p in pixels that ``offset`` refers to.
    """

    offset: torch.Tensor
    flip: torch.Tensor
    jitter_on: torch.Tensor
    factors: torch.Tensor
    gray: torch.Tensor
    padding: int = 0

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    @property
    def device(self) -> torch.device:
        return self.offset.device

    def index(self, sel) -> "AugmentParams":
        """The parameters of a subset of samples (``sel``: slice, index tensor or bool mask)."""
        return AugmentParams(self.offset[sel], self.flip[sel], self.jitter_on[sel],
                             self.factors[sel], self.gray[sel], self.padding)

    def to(self, device) -> "AugmentParams":
        """A copy on ``device``."""
        return AugmentParams(*(getattr(self, f.name).to(device) for f in fields(self)
                               if f.name != "padding"), padding=self.padding)

    @classmethod
    def identity(cls, n: int, device=None) -> "AugmentParams":
        """Parameters that leave every sample unchanged: no crop shift, no flip, no jitter, no
        grayscale (padding 0). Used for evaluation batches."""
        device = torch.device("cpu") if device is None else torch.device(device)
        factors = torch.zeros(n, 4, dtype=torch.float32, device=device)
        factors[:, :3] = 1.0  # b = c = s = 1, h = 0
        return cls(
            offset=torch.zeros(n, 2, dtype=torch.int32, device=device),
            flip=torch.zeros(n, dtype=torch.bool, device=device),
            jitter_on=torch.zeros(n, dtype=torch.bool, device=device),
            factors=factors,
            gray=torch.zeros(n, dtype=torch.bool, device=device),
            padding=0,
        )


def check_jitter(jitter) -> Tuple[float, float, float, float]:
    try:
        b, c, s, h = (float(v) for v in jitter)
    except (TypeError, ValueError):
        raise ConfigError(
            f"augment jitter={jitter!r} must be 4 numbers (brightness, contrast, saturation, hue), "
            f"e.g. (0.4, 0.4, 0.4, 0.1)") from None
    if min(b, c, s) < 0 or not 0.0 <= h <= 0.5:
        raise ConfigError(
            f"augment jitter={jitter!r}: brightness/contrast/saturation strengths must be >= 0 and "
            f"hue must be in [0, 0.5] turns (torchvision's ColorJitter limits)")
    return b, c, s, h


def check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"augment {name}={p!r} is a probability and must be in [0, 1]")
    return p


def sample_params(
    n: int,
    height: int,
    width: int,
    *,
    padding: int = 4,
    flip: bool = True,
    jitter: Optional[Sequence[float]] = None,
    jitter_p: float = 0.8,
    gray_p: float = 0.0,
    generator: Optional[torch.Generator] = None,
    device=None,
) -> AugmentParams:
    """Draw the per-sample parameters of a batch of ``n`` images of size ``height × width``.

    Distributions (torchvision RandomCrop / RandomHorizontalFlip / RandomApply(ColorJitter) /
    RandomGrayscale):

    - offset (dy, dx) ~ U{0, …, 2·padding}² independently;
    - flip ~ Bernoulli(0.5) when ``flip`` else never;
    - jitter = (B, C, S, H) or None: ``jitter_on ~ Bernoulli(jitter_p)``;
      b ~ U[max(0, 1-B), 1+B], c ~ U[max(0, 1-C), 1+C], s ~ U[max(0, 1-S), 1+S],
      h ~ U[-H, H] (turns). A strength of 0 gives the exact identity factor (1, or 0 for hue);
    - gray ~ Bernoulli(gray_p).

    Colour changes are opt-in: without ``jitter`` and ``gray_p`` a batch is only cropped and
    flipped (CG of spec §3.4 is ``jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2``, what
    :class:`Augmenter` passes when ``augment.cg`` is on). Until 2026-12 ``gray_p`` defaulted to 0.2,
    so callers that asked for crop + flip alone (AEP's ``paugment``, BAIT's ``outer_eot``) also
    grayed a fifth of their images.

    ``height``/``width`` do not change the distribution (offsets are relative to the padded
    image) but are validated so a wrong call fails here rather than in the kernel.

    All draws are made with torch on ``device`` with ``generator`` (which must live on that
    device; ``device`` defaults to the generator's device, else CPU): no host sync and no Python
    loop over samples. The draw order is fixed (offsets, flips, then the CG draws), so a seeded
    generator gives the same crops and flips whatever the CG settings.
    """
    n, height, width, padding = int(n), int(height), int(width), int(padding)
    if n < 0 or height < 1 or width < 1:
        raise ConfigError(f"sample_params: need n >= 0 and a positive image size, "
                          f"got n={n}, height={height}, width={width}")
    if padding < 0:
        raise ConfigError(f"augment crop_padding={padding} must be >= 0 pixels (0 = no crop)")
    jitter_p = check_prob("jitter_p", jitter_p)
    gray_p = check_prob("gray_p", gray_p)
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    kw = dict(generator=generator, device=device)

    offset = torch.randint(0, 2 * padding + 1, (n, 2), dtype=torch.int32, **kw)
    if flip:
        flip_t = torch.rand(n, **kw) < 0.5
    else:
        flip_t = torch.zeros(n, dtype=torch.bool, device=device)

    if jitter is not None and jitter_p > 0:
        B, C, S, Hs = check_jitter(jitter)
        lo = (max(0.0, 1.0 - B), max(0.0, 1.0 - C), max(0.0, 1.0 - S), -Hs)
        hi = (1.0 + B, 1.0 + C, 1.0 + S, Hs)
        jitter_on = torch.rand(n, **kw) < jitter_p
        u = torch.rand(n, 4, **kw)
        # Per column: lo + (hi - lo)·u with Python scalars (a torch.tensor(lo, device=cuda) would
        # be a blocking host→device copy). A zero strength gives exactly lo = hi = identity.
        factors = torch.stack([u[:, k] * (hi[k] - lo[k]) + lo[k] for k in range(4)], dim=1)
    else:
        if jitter is not None:
            check_jitter(jitter)
        jitter_on = torch.zeros(n, dtype=torch.bool, device=device)
        factors = torch.zeros(n, 4, dtype=torch.float32, device=device)
        factors[:, :3] = 1.0

    if gray_p > 0:
        gray = torch.rand(n, **kw) < gray_p
    else:
        gray = torch.zeros(n, dtype=torch.bool, device=device)
    return AugmentParams(offset, flip_t, jitter_on, factors, gray, padding)


# =====================================================================================
# Reference (plain torch): the specification and the CPU path
# =====================================================================================


def _check_batch(x: torch.Tensor, params: AugmentParams) -> None:
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(
            f"augment expects an NHWC batch of shape (N, H, W, 3), got {tuple(x.shape)}")
    if len(params) != x.shape[0]:
        raise ValueError(
            f"augment: {len(params)} parameter rows for a batch of {x.shape[0]} images")
    if params.device != x.device:
        raise ValueError(f"augment: params on {params.device} but the batch is on {x.device}")


def norm_consts(mean: Optional[_FloatSeq], std: Optional[_FloatSeq]):
    """(mean, std) as two tuples of 3 floats, or None when normalisation is off."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise ConfigError("augment normalisation needs both mean and std (or neither)")
    m = [float(v) for v in (mean.tolist() if isinstance(mean, torch.Tensor) else mean)]
    s = [float(v) for v in (std.tolist() if isinstance(std, torch.Tensor) else std)]
    if len(m) != 3 or len(s) != 3:
        raise ConfigError(f"augment mean/std must have 3 values (R, G, B), got {m} / {s}")
    if min(s) <= 0:
        raise ConfigError(f"augment std={s} must be > 0 in every channel")
    return tuple(m), tuple(s)


def luma(img: torch.Tensor, dim: int = -1, keepdim: bool = False) -> torch.Tensor:
    """ITU-R 601-2 luma (PIL's "L" weights :data:`GRAY_WEIGHTS`) of RGB along ``dim``:
    (..., 3) → (...) by default; (B, 3, H, W) with ``dim=1, keepdim=True`` → (B, 1, H, W)."""
    r, g, b = img.unbind(dim)
    out = GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b
    return out.unsqueeze(dim) if keepdim else out


def _rgb_to_hsv(img: torch.Tensor):
    """torchvision ``_rgb2hsv`` on a channels-last (..., 3) image: returns h, s, v (...)."""
    r, g, b = img.unbind(-1)
    maxc = torch.max(img, dim=-1).values
    minc = torch.min(img, dim=-1).values
    eqc = maxc == minc  # gray pixel: hue undefined, saturation 0
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc = (maxc - r) / cr_divisor
    gc = (maxc - g) / cr_divisor
    bc = (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = hr + hg + hb
    h = torch.fmod((h / 6.0 + 1.0), 1.0)
    return h, s, maxc


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchvision ``_hsv2rgb``, channels-last: (...) ×3 → (..., 3)."""
    i = torch.floor(h * 6.0)
    f = (h * 6.0) - i
    i = i.to(dtype=torch.int32)
    p = torch.clamp((v * (1.0 - s)), 0.0, 1.0)
    q = torch.clamp((v * (1.0 - s * f)), 0.0, 1.0)
    t = torch.clamp((v * (1.0 - s * (1.0 - f))), 0.0, 1.0)
    i = i % 6
    mask = (i.unsqueeze(-1) == torch.arange(6, device=i.device)).to(v.dtype)  # (..., 6) sector
    a1 = torch.stack((v, q, p, p, t, v), dim=-1)
    a2 = torch.stack((t, v, v, q, p, p), dim=-1)
    a3 = torch.stack((p, p, t, v, v, q), dim=-1)
    return torch.stack(((mask * a1).sum(-1), (mask * a2).sum(-1), (mask * a3).sum(-1)), dim=-1)


def _adjust_hue(img: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision ``adjust_hue``: rotate the HSV hue by ``hue`` turns (broadcast over pixels)."""
    h, s, v = _rgb_to_hsv(img)
    h = (h + hue) % 1.0
    return _hsv_to_rgb(h, s, v)


def _per_channel(values: Tuple[float, float, float], dtype: torch.dtype, device) -> torch.Tensor:
    """A (3,) tensor of Python floats built on ``device`` with fills (``torch.tensor(list,
    device=cuda)`` would be a blocking host→device copy on every call)."""
    t = torch.full((3,), values[2], dtype=dtype, device=device)
    t[0] = values[0]
    t[1] = values[1]
    return t


def _maybe(flags: torch.Tensor) -> bool:
    """Whether any sample might need a stage. On CPU the answer is exact (no sync cost), so
    unused stages are skipped; on an accelerator we do not sync and always run the stage."""
    return bool(flags.any()) if flags.device.type == "cpu" else True


def augment_ref(
    x: torch.Tensor,
    params: AugmentParams,
    *,
    mean: Optional[_FloatSeq] = None,
    std: Optional[_FloatSeq] = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Reference augmentation (see the module docstring for the math).

    Args:
        x: (N, H, W, 3) uint8 (divided by 255), or floating in [0, 1] — then the result is
            differentiable w.r.t. ``x`` (EOT over augmentations). A channels-last (N, 3, H, W)
            tensor ``t`` can be passed as ``t.permute(0, 2, 3, 1)`` (a view, no copy).
        params: per-sample parameters (:func:`sample_params`), N rows, on x's device.
        mean, std: 3 values each, or both None (no normalisation).
        out_dtype: dtype of the result.

    Returns:
        (N, 3, H, W) in channels-last memory format, dtype ``out_dtype``. Computed in float32
        (float64 if x is float64).
    """
    _check_batch(x, params)
    norm = norm_consts(mean, std)
    if x.dtype == torch.uint8:
        # A device tensor divisor keeps this an IEEE division on CUDA too (torch turns division
        # by a Python scalar into multiplication by its reciprocal there, off by 1 ulp for 126
        # of the 256 values); the kernel's div_rn matches it bit for bit.
        img = x.to(torch.float32) / torch.full((), 255.0, device=x.device)
    elif x.is_floating_point():
        img = x if x.dtype in (torch.float32, torch.float64) else x.to(torch.float32)
    else:
        raise TypeError(f"augment expects uint8 or floating images, got {x.dtype}")
    N, H, W, _ = img.shape
    dev, dt = img.device, img.dtype
    view = (N, 1, 1, 1)  # per-sample scalars broadcast over (H, W, 3)

    # --- crop from the zero-padded image + flip, as one gather (differentiable) --------------
    # Output (i, j) reads source row i + dy - p and column (W-1-j if flip else j) + dx - p;
    # sources outside the image are the zero padding. Gathering with clamped indices and
    # zeroing the invalid ones (rather than F.pad + gather) gives the same values, and defines
    # offsets outside [0, 2p] the same way the kernel does (zeros beyond the image).
    p = int(params.padding)
    off = params.offset.to(torch.long)
    ii = torch.arange(H, device=dev)
    jj = torch.arange(W, device=dev)
    flip = params.flip.to(torch.bool)
    src_i = off[:, 0:1] - p + ii  # (N, H)
    src_j = off[:, 1:2] - p + torch.where(flip[:, None], W - 1 - jj, jj)  # (N, W)
    valid = (((src_i >= 0) & (src_i < H))[:, :, None]
             & ((src_j >= 0) & (src_j < W))[:, None, :])  # (N, H, W)
    nidx = torch.arange(N, device=dev)[:, None, None]
    img = img[nidx, src_i.clamp(0, H - 1)[:, :, None], src_j.clamp(0, W - 1)[:, None, :]]
    img = torch.where(valid[..., None], img, torch.zeros((), dtype=dt, device=dev))  # (N,H,W,3)

    # --- colour jitter: brightness → contrast → saturation → hue -----------------------------
    on = params.jitter_on.to(torch.bool)
    if N and _maybe(on):
        fac = params.factors.to(dt)
        bf, cf, sf, hf = (fac[:, k].view(view) for k in range(4))
        onv = on.view(view)
        img = torch.where(onv, (img * bf).clamp(0.0, 1.0), img)
        m = luma(img).mean(dim=(1, 2)).view(view)  # contrast: mean gray of the current image
        img = torch.where(onv, (cf * img + (1.0 - cf) * m).clamp(0.0, 1.0), img)
        g = luma(img).unsqueeze(-1)
        img = torch.where(onv, (sf * img + (1.0 - sf) * g).clamp(0.0, 1.0), img)
        hue_on = on & (params.factors[:, 3] != 0)
        if _maybe(hue_on):
            img = torch.where(hue_on.view(view), _adjust_hue(img, hf.view(N, 1, 1)), img)

    # --- random grayscale --------------------------------------------------------------------
    gray = params.gray.to(torch.bool)
    if N and _maybe(gray):
        img = torch.where(gray.view(view), luma(img).unsqueeze(-1).expand_as(img), img)

    # --- normalisation -----------------------------------------------------------------------
    if norm is not None:
        img = (img - _per_channel(norm[0], dt, dev)) / _per_channel(norm[1], dt, dev)

    # NHWC memory viewed as logical NCHW *is* channels-last.
    out = img.permute(0, 3, 1, 2).to(out_dtype)
    return out.contiguous(memory_format=torch.channels_last)


# =====================================================================================
# Triton kernel (loaded lazily: importing this module never imports triton)
# =====================================================================================


@functools.lru_cache(maxsize=None)
def _kernels():
    """Compile-on-first-use namespace holding the Triton kernel (imports triton here)."""
    import triton
    import triton.language as tl

    @triton.jit
    def _augment_kernel(
        x_ptr, out_ptr,                      # (N, H, W, 3) uint8 in; (N, H, W, 3) out_dtype out
        off_ptr, flip_ptr, jit_ptr, fac_ptr, gray_ptr,  # AugmentParams rows
        H, W, PAD, TILES_PER_PROG,
        m0, m1, m2, s0, s1, s2,              # normalisation mean / std (used if NORMALIZE)
        NORMALIZE: tl.constexpr, BLOCK: tl.constexpr,
    ):
        # Grid (N, P): program (n, part) writes output tiles [part·T, (part+1)·T) of image n,
        # a tile being BLOCK consecutive output pixels in row-major (i, j) order.
        n = tl.program_id(0)
        part = tl.program_id(1)
        HW = H * W
        base = n.to(tl.int64) * HW * 3  # int64: N·H·W·3 may exceed 2^31
        xb = x_ptr + base
        ob = out_ptr + base

        dy = tl.load(off_ptr + 2 * n) - PAD   # crop shift relative to the unpadded image
        dx = tl.load(off_ptr + 2 * n + 1) - PAD
        flip = tl.load(flip_ptr + n) != 0
        jit = tl.load(jit_ptr + n) != 0
        gray = tl.load(gray_ptr + n) != 0
        bf = tl.load(fac_ptr + 4 * n)
        cf = tl.load(fac_ptr + 4 * n + 1)
        sf = tl.load(fac_ptr + 4 * n + 2)
        hf = tl.load(fac_ptr + 4 * n + 3)

        lanes = tl.arange(0, BLOCK)
        n_tiles = tl.cdiv(HW, BLOCK)

        # ---- sweep 1 (only if contrast is on): mean gray of the cropped, brightened image.
        # The flip does not change a mean, so it is ignored here. Each program of the image
        # computes the full mean itself: the image is re-read from L2 (it was just read by a
        # sibling program), which costs less than a second launch and a global sync.
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        if jit & (cf != 1.0):
            for t in range(0, n_tiles):
                q = t * BLOCK + lanes
                i = q // W
                j = q - i * W
                si = i + dy
                sj = j + dx
                valid = (q < HW) & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
                src = (si * W + sj) * 3
                r = tl.math.div_rn(tl.load(xb + src, mask=valid, other=0).to(tl.float32), 255.0)
                g = tl.math.div_rn(tl.load(xb + src + 1, mask=valid, other=0).to(tl.float32), 255.0)
                b = tl.math.div_rn(tl.load(xb + src + 2, mask=valid, other=0).to(tl.float32), 255.0)
                r = tl.minimum(tl.maximum(r * bf, 0.0), 1.0)
                g = tl.minimum(tl.maximum(g * bf, 0.0), 1.0)
                b = tl.minimum(tl.maximum(b * bf, 0.0), 1.0)
                acc += 0.299 * r + 0.587 * g + 0.114 * b  # padded / out-of-range lanes are 0
        gmean = tl.sum(acc, axis=0) / (HW * 1.0)  # ·1.0: also when H·W is a constexpr

        # ---- sweep 2: every op, output tile by tile.
        t0 = part * TILES_PER_PROG
        t1 = tl.minimum(t0 + TILES_PER_PROG, n_tiles)
        for t in range(t0, t1):
            q = t * BLOCK + lanes
            inb = q < HW
            i = q // W
            j = q - i * W
            jj = tl.where(flip, W - 1 - j, j)
            si = i + dy
            sj = jj + dx
            valid = inb & (si >= 0) & (si < H) & (sj >= 0) & (sj < W)
            src = (si * W + sj) * 3
            # div_rn: IEEE division, bit-equal to the reference (x · (1/255) is not, for 126
            # of the 256 values; Triton's plain '/' may lower to an approximate division).
            r = tl.math.div_rn(tl.load(xb + src, mask=valid, other=0).to(tl.float32), 255.0)
            g = tl.math.div_rn(tl.load(xb + src + 1, mask=valid, other=0).to(tl.float32), 255.0)
            b = tl.math.div_rn(tl.load(xb + src + 2, mask=valid, other=0).to(tl.float32), 255.0)
            if jit:
                r = tl.minimum(tl.maximum(r * bf, 0.0), 1.0)
                g = tl.minimum(tl.maximum(g * bf, 0.0), 1.0)
                b = tl.minimum(tl.maximum(b * bf, 0.0), 1.0)
                r = tl.minimum(tl.maximum(cf * r + (1.0 - cf) * gmean, 0.0), 1.0)
                g = tl.minimum(tl.maximum(cf * g + (1.0 - cf) * gmean, 0.0), 1.0)
                b = tl.minimum(tl.maximum(cf * b + (1.0 - cf) * gmean, 0.0), 1.0)
                lum = 0.299 * r + 0.587 * g + 0.114 * b
                r = tl.minimum(tl.maximum(sf * r + (1.0 - sf) * lum, 0.0), 1.0)
                g = tl.minimum(tl.maximum(sf * g + (1.0 - sf) * lum, 0.0), 1.0)
                b = tl.minimum(tl.maximum(sf * b + (1.0 - sf) * lum, 0.0), 1.0)
                if hf != 0.0:
                    # torchvision _rgb2hsv → (h + hue) mod 1 → _hsv2rgb, line for line (see
                    # _rgb_to_hsv). Inline: the interpreter cannot see nested jit helpers.
                    maxc = tl.maximum(tl.maximum(r, g), b)
                    minc = tl.minimum(tl.minimum(r, g), b)
                    eqc = maxc == minc
                    cr = maxc - minc
                    s = cr / tl.where(eqc, 1.0, maxc)
                    crd = tl.where(eqc, 1.0, cr)
                    rc = (maxc - r) / crd
                    gc = (maxc - g) / crd
                    bc = (maxc - b) / crd
                    h = tl.where(maxc == r, bc - gc,
                                 tl.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
                    # h/6 + 1 is in [5/6, 11/6], where fmod(·, 1) = · - floor(·)
                    h = tl.math.div_rn(h, 6.0) + 1.0
                    h = h - tl.floor(h)
                    h = h + hf
                    h = h - tl.floor(h)  # Python/torch '%': result in [0, 1]
                    v = maxc
                    h6 = h * 6.0
                    sec = tl.floor(h6)
                    f = h6 - sec
                    # sector % 6: h can round up to exactly 1.0
                    sec = tl.where(sec >= 6.0, sec - 6.0, sec)
                    hp = tl.minimum(tl.maximum(v * (1.0 - s), 0.0), 1.0)
                    hq = tl.minimum(tl.maximum(v * (1.0 - s * f), 0.0), 1.0)
                    ht = tl.minimum(tl.maximum(v * (1.0 - s * (1.0 - f)), 0.0), 1.0)
                    # (hp, hq, ht: torchvision's p, q, t, renamed off the loop's q, t)
                    # sectors 0..5: r = (v,q,p,p,t,v), g = (t,v,v,q,p,p), b = (p,p,t,v,v,q)
                    s0_ = sec == 0.0
                    s1_ = sec == 1.0
                    s2_ = sec == 2.0
                    s3_ = sec == 3.0
                    s4_ = sec == 4.0
                    s5_ = sec == 5.0
                    r2 = tl.where(s0_ | s5_, v, tl.where(s1_, hq, tl.where(s4_, ht, hp)))
                    g2 = tl.where(s0_, ht, tl.where(s1_ | s2_, v, tl.where(s3_, hq, hp)))
                    b2 = tl.where(s0_ | s1_, hp, tl.where(s2_, ht, tl.where(s5_, hq, v)))
                    r = r2
                    g = g2
                    b = b2
            if gray:
                lum = 0.299 * r + 0.587 * g + 0.114 * b
                r = lum
                g = lum
                b = lum
            if NORMALIZE:  # div_rn again: bit-equal to the reference's (x - mean) / std
                r = tl.math.div_rn(r - m0, s0)
                g = tl.math.div_rn(g - m1, s1)
                b = tl.math.div_rn(b - m2, s2)
            dst = q * 3
            ety = out_ptr.dtype.element_ty
            tl.store(ob + dst, r.to(ety), mask=inb)
            tl.store(ob + dst + 1, g.to(ety), mask=inb)
            tl.store(ob + dst + 2, b.to(ety), mask=inb)

    return {"augment": _augment_kernel}


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _as_flag(t: torch.Tensor) -> torch.Tensor:
    """(N,) flag tensor as int8 for the kernel: bool is reinterpreted (free), others compared."""
    if t.dtype == torch.bool:
        return t.contiguous().view(torch.int8)
    if t.dtype == torch.int8:
        return t.contiguous()
    return (t != 0).view(torch.int8)


_OUT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def augment_triton(
    x: torch.Tensor,
    params: AugmentParams,
    *,
    mean: Optional[_FloatSeq] = None,
    std: Optional[_FloatSeq] = None,
    out_dtype: torch.dtype = torch.float32,
    block: Optional[int] = None,
    programs_per_image: Optional[int] = None,
) -> torch.Tensor:
    """The whole augmentation in one Triton kernel, from uint8 (same contract as
    :func:`augment_ref`; ``x`` must be uint8 NHWC).

    Reads N·H·W·3 bytes once (plus, for images whose contrast factor ≠ 1, a second read of the
    image, normally from L2, for the contrast mean) and writes N·H·W·3 output elements once.
    Math is float32 in registers; only the store casts to ``out_dtype``.

    Tuning knobs (defaults are sensible; tests use them to reach every code path on small
    images): ``block`` — output pixels per tile (power of 2); ``programs_per_image`` — programs
    sharing one image's tiles (default: enough for ~2 programs per SM on CUDA, 1 otherwise).
    """
    _check_batch(x, params)
    if x.dtype != torch.uint8:
        raise TypeError(f"augment_triton reads uint8 images, got {x.dtype}; use augment_ref")
    if out_dtype not in _OUT_DTYPES:
        raise TypeError(f"augment_triton writes one of {_OUT_DTYPES}, got {out_dtype}")
    norm = norm_consts(mean, std)
    N, H, W, _ = x.shape
    out = torch.empty((N, H, W, 3), dtype=out_dtype, device=x.device)
    if N == 0:
        return out.permute(0, 3, 1, 2)
    x = x.contiguous()
    HW = H * W
    if block is None:
        # 1024 pixels = 8 per thread at 4 warps; smaller images get the next power of 2.
        block = min(1024, max(128, 1 << (HW - 1).bit_length()))
    if block & (block - 1):
        raise ValueError(f"block={block} must be a power of 2")
    n_tiles = -(-HW // block)
    if programs_per_image is None:
        programs_per_image = 1
        if x.is_cuda:
            # Large images in small batches: split tiles so the grid still fills ~2 programs per
            # SM; each split re-reads its image once for the contrast mean (see the kernel).
            programs_per_image = -(-2 * _sm_count(x.device.index or 0) // N)
    programs_per_image = max(1, min(int(programs_per_image), n_tiles))
    tiles_per_prog = -(-n_tiles // programs_per_image)
    programs_per_image = -(-n_tiles // tiles_per_prog)

    m, s = norm if norm is not None else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    kernel = _kernels()["augment"]
    kernel[(N, programs_per_image)](
        x, out,
        params.offset.to(torch.int32).contiguous(), _as_flag(params.flip),
        _as_flag(params.jitter_on), params.factors.to(torch.float32).contiguous(),
        _as_flag(params.gray),
        H, W, int(params.padding), tiles_per_prog,
        m[0], m[1], m[2], s[0], s[1], s[2],
        NORMALIZE=norm is not None, BLOCK=block, num_warps=4,
    )
    return out.permute(0, 3, 1, 2)  # logical NCHW view of NHWC memory = channels-last


# =====================================================================================
# Dispatch and conveniences
# =====================================================================================


def augment(
    x: torch.Tensor,
    params: AugmentParams,
    *,
    mean: Optional[_FloatSeq] = None,
    std: Optional[_FloatSeq] = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Augment a batch: the Triton kernel for uint8 input when :func:`use_triton` says so,
    else :func:`augment_ref` (always for float input, which may need gradients)."""
    if x.dtype == torch.uint8 and out_dtype in _OUT_DTYPES and use_triton(x):
        return augment_triton(x, params, mean=mean, std=std, out_dtype=out_dtype)
    return augment_ref(x, params, mean=mean, std=std, out_dtype=out_dtype)


def eval_transform(
    x: torch.Tensor,
    *,
    mean: Optional[_FloatSeq] = None,
    std: Optional[_FloatSeq] = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Test-time transform, no randomness: x / 255 (uint8) → optional (x - mean) / std →
    (N, 3, H, W) channels-last ``out_dtype``. Runs the augmentation kernel with identity
    parameters (one sweep, no jitter branch taken)."""
    if x.dim() != 4:
        raise ValueError(f"eval_transform expects an NHWC batch (N, H, W, 3), got {tuple(x.shape)}")
    params = AugmentParams.identity(x.shape[0], device=x.device)
    return augment(x, params, mean=mean, std=std, out_dtype=out_dtype)
