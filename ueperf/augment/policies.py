"""Batch augmentation policies (spec §3.2-§3.4), in plain torch: what UEraser and the
counter-overfitting countermeasures apply to each training batch.

Conventions, unless a function says otherwise:

- images are float tensors (B, 3, H, W) with values in [0, 1] (pixel units), any memory format;
  the output has the input's shape, dtype and device; every op is per-sample random where the
  method is (one draw per image, not per batch), batched (no Python loop over the batch) and
  free of host syncs (no ``.item()``), so it can run inside the training loop on the device;
- randomness comes from the optional ``generator`` (a ``torch.Generator`` on the batch's device;
  None = torch's global one). Draws are made in a fixed order, so the same generator state gives
  the same output;
- ``p``-probability ops compute the op for the whole batch and keep it where a per-sample
  Bernoulli(p) draw says so (``torch.where``): a little extra arithmetic instead of a boolean
  gather, which would sync the host;
- "gray" is ITU-R 601-2 luma, ``0.299 R + 0.587 G + 0.114 B`` (PIL's weights):
  :func:`ueperf.kernels.augment.luma`, the fused CG kernel's own.

Contents
--------
plasma fractal    :func:`diamond_square`, :func:`plasma_brightness`, :func:`plasma_contrast`
                  (kornia RandomPlasmaBrightness / RandomPlasmaContrast, spec §3.2)
colour            :func:`channel_shuffle`, :func:`grayscale`, :func:`posterize`, :func:`solarize`,
                  :func:`autocontrast`, :func:`equalize`
auto-augment      :data:`OPS`, :func:`apply_ops` (one op per image, batched),
                  :func:`trivial_augment` (TrivialAugmentWide), :func:`rand_augment`, :func:`auto_augment`
regularisers      :func:`cutout`, :func:`mixup`, :func:`cutmix`, :func:`gaussian_blur`,
                  :func:`sample_beta`

The uint8 host-side squeezes (JPEG, grayscale, posterize of whole images) are in
:mod:`ueperf.augment.squeeze`.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..kernels.augment import luma

Tensor = torch.Tensor


# ───────────────────────────────────────────── helpers ──
def _check_images(x: Tensor, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"{name}: expected images (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected float images in [0, 1], got {x.dtype}")


def _rand(shape, x: Tensor, generator: Optional[torch.Generator]) -> Tensor:
    """U[0, 1) of ``shape`` on x's device, float32."""
    return torch.rand(shape, generator=generator, device=x.device, dtype=torch.float32)


def _uniform(n: int, lo_hi: Tuple[float, float], x: Tensor, generator) -> Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return _rand((n,), x, generator) * (hi - lo) + lo


def _keep(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """``new`` where the per-sample ``mask`` (B,) is true, else ``old``."""
    return torch.where(mask.view(-1, 1, 1, 1), new, old)


def _gray(x: Tensor) -> Tensor:
    """(B, 3, H, W) → (B, 1, H, W) luma."""
    return luma(x, dim=1, keepdim=True)


def _to_u8_levels(x: Tensor) -> Tensor:
    """[0, 1] float → integer levels 0..255 (float dtype), ``round(255 · clamp(x, 0, 1))``."""
    return torch.round(x.clamp(0, 1) * 255.0)


# ═════════════════════════════════════════════ plasma fractal ══
# kornia.contrib.diamond_square (after TorMentor, Nicolaou et al.), reproduced step for step —
# including its quirks (the 3×L seed's edge sums, the 4/3 border factor meant for zero padding
# applied after reflect padding), because UEraser's numbers were made with it (spec §3.2).
def _ds_seed(n: int, rows: int, cols: int, like: Tensor, generator) -> Tensor:
    """kornia's ``_diamond_square_seed``: a (n, 1, rows, cols) start grid, one side 3, the other
    odd. Corners are U[0,1); the centres of the 2×2 cells their mean; edge midpoints sums of three
    neighbours; everything is then divided by 3 (values stay in [0, 1])."""
    transpose = cols == 3  # kornia's rule: a 3 x 3 seed is built transposed too
    if transpose:
        rows, cols = cols, rows
    if rows != 3 or cols % 2 == 0 or cols < 3:
        raise ValueError(f"diamond-square seed must be 3 x odd, got {rows} x {cols}")
    res = _rand((n, 1, 3, cols), like, generator)
    res[..., ::2, ::2] = _rand((n, 1, 2, (cols + 1) // 2), like, generator)
    res[..., 1, 1::2] = (res[..., ::2, :-2:2] + res[..., ::2, 2::2]).sum(dim=2) / 4.0
    tmp1 = res[..., 2, 0].clone()
    res[..., 1, 0] = res[..., 0, 0] + res[..., 1, 1] + tmp1
    res[..., 1, -1] = res[..., -1, -1] + res[..., 1, -2] + tmp1
    tmp2 = res[..., 1, 1::2].clone()
    res[..., 0, 1::2] = res[..., 0, 0:-2:2] + res[..., 0, 2::2] + tmp2
    res[..., 2, 1::2] = res[..., 2, 0:-2:2] + res[..., 2, 2::2] + tmp2
    res = res / 3.0
    return res.transpose(2, 3) if transpose else res


def _one_diamond_one_square(img: Tensor, scale: Tensor, generator) -> Tensor:
    """(n, h, w) with h, w = 2^k + 1 → (n, 2h − 1, 2w − 1): one kornia diamond-square step.

    Old points O move to the even positions; with s = ``scale`` (n, 1, 1) and u ~ U[0, 1) drawn
    once for the new grid:

    - diamond step, cell centres (odd, odd): ``v = (1 − s)·mean(4 diagonal old points) + s·u``;
    - square step, edge midpoints (i + j odd): ``v = (1 − s)·c·mean(4 axial neighbours) + s·u``,
      neighbours taken with reflect padding (a border midpoint sees its one inner centre twice)
      and c = 4/3 on the border rows/columns, else 1 (kornia's ``pad_compencate``, written for
      zero padding but applied after its reflect-padded filter2d — kept for fidelity).

    kornia computes both steps as 3×3 convolutions over the whole grid; these are the same sums
    read off by slicing, which is ~20× cheaper for thousands of tiny maps.
    """
    n, h, w = img.shape
    H2, W2 = 2 * h - 1, 2 * w - 1
    u = _rand((n, H2, W2), img, generator).to(img.dtype) * scale
    keep = 1 - scale
    cen = keep * 0.25 * (img[:, :-1, :-1] + img[:, :-1, 1:] + img[:, 1:, :-1] + img[:, 1:, 1:]) \
        + u[:, 1::2, 1::2]                                                   # (n, h-1, w-1)
    # midpoints on old rows (2i, 2j+1): centres above/below (reflected at the border), old left/right
    cr = torch.cat([cen[:, :1], cen, cen[:, -1:]], dim=1)                    # (n, h+1, w-1)
    row_mid = 0.25 * (cr[:, :-1] + cr[:, 1:] + img[:, :, :-1] + img[:, :, 1:])
    row_fac = torch.ones(h, 1, device=img.device, dtype=img.dtype)
    row_fac[0], row_fac[-1] = 1.0 / 0.75, 1.0 / 0.75
    row_mid = keep * row_mid * row_fac + u[:, ::2, 1::2]
    # midpoints on old columns (2i+1, 2j): old above/below, centres left/right (reflected)
    cc = torch.cat([cen[:, :, :1], cen, cen[:, :, -1:]], dim=2)              # (n, h-1, w+1)
    col_mid = 0.25 * (img[:, :-1] + img[:, 1:] + cc[:, :, :-1] + cc[:, :, 1:])
    col_fac = torch.ones(1, w, device=img.device, dtype=img.dtype)
    col_fac[:, 0], col_fac[:, -1] = 1.0 / 0.75, 1.0 / 0.75
    col_mid = keep * col_mid * col_fac + u[:, 1::2, ::2]
    new = torch.empty(n, H2, W2, device=img.device, dtype=img.dtype)
    new[:, ::2, ::2] = img
    new[:, 1::2, 1::2] = cen
    new[:, ::2, 1::2] = row_mid
    new[:, 1::2, ::2] = col_mid
    return new


def diamond_square(n: int, height: int, width: int, roughness: Tensor, *,
                   generator: Optional[torch.Generator] = None, device=None) -> Tensor:
    """Plasma fractal maps (kornia ``diamond_square`` with random_scale 1, no normalisation).

    Args:
        n: number of maps.
        height, width: map size in pixels, each >= 3.
        roughness: (n,) per-map roughness r in (0, 1]; level d (d = 1..D) of the recursion adds
            uniform noise of amplitude r^d, so small r gives smooth maps, large r rough ones.
        generator / device: where the random draws come from / are made.

    Returns:
        (n, height, width) float32, values >= 0 and mostly in [0, 1] (kornia's 4/3 border factor
        can lift border values somewhat above 1; the plasma ops clamp their output).

    The grid is grown from a 3 × (2^m + 1) seed by D = min(log2(P_h − 1), log2(P_w − 1)) − 1
    diamond-square steps, P = 2^ceil(log2(size − 1)) + 1, and cropped to height × width.
    """
    if height < 3 or width < 3:
        raise ValueError(f"diamond_square: maps need at least 3 x 3 pixels, got {height} x {width}")
    device = torch.device(device) if device is not None else roughness.device
    like = torch.empty(0, device=device)
    p2h = 2 ** math.ceil(math.log2(height - 1)) + 1
    p2w = 2 ** math.ceil(math.log2(width - 1)) + 1
    depth = int(min(math.log2(p2h - 1) - 1, math.log2(p2w - 1) - 1))
    sh = (p2h - 1) // 2 ** depth + 1
    sw = (p2w - 1) // 2 ** depth + 1
    img = _ds_seed(n, sh, sw, like, generator)[:, 0]
    r = roughness.to(device=device, dtype=torch.float32).view(-1, 1, 1)
    scale = torch.ones_like(r)
    for _ in range(depth):
        scale = scale * r
        img = _one_diamond_one_square(img, scale, generator)
    return img[:, :height, :width]


def plasma_brightness(x: Tensor, *, roughness: Tuple[float, float] = (0.3, 0.7),
                      intensity: Tuple[float, float] = (0.5, 1.0), p: float = 0.5,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """kornia RandomPlasmaBrightness: add a fractal brightness field.

    Per sample: r ~ U[roughness], a ~ U[intensity], applied with probability p;
    ``x'_c = clamp(x_c + a·(2·P_c − 1), 0, 1)`` with P_c an independent
    :func:`diamond_square` map per channel c (so the field is coloured). Defaults: UEraser's
    (roughness 0.3-0.7, intensity 0.5-1.0, p 0.5; spec §3.2). Shapes: (B, 3, H, W) → same.
    """
    _check_images(x, "plasma_brightness")
    B, C, H, W = x.shape
    apply = _rand((B,), x, generator) < p
    r = _uniform(B, roughness, x, generator)
    a = _uniform(B, intensity, x, generator)
    maps = diamond_square(B * C, H, W, r.repeat_interleave(C), generator=generator, device=x.device)
    field = (2 * maps.view(B, C, H, W) - 1) * a.view(-1, 1, 1, 1)
    return _keep(apply, (x.float() + field).clamp(0, 1).to(x.dtype), x)


def plasma_contrast(x: Tensor, *, roughness: Tuple[float, float] = (0.3, 0.7), p: float = 0.5,
                    generator: Optional[torch.Generator] = None) -> Tensor:
    """kornia RandomPlasmaContrast: multiply the contrast about 0.5 by a fractal field.

    Per sample: r ~ U[roughness], applied with probability p;
    ``x'_c = clamp((x_c − 0.5)·4·P_c + 0.5, 0, 1)``, P_c a :func:`diamond_square` map per
    channel (mean gain about 2). Defaults: UEraser's (spec §3.2). Shapes: (B, 3, H, W) → same.
    """
    _check_images(x, "plasma_contrast")
    B, C, H, W = x.shape
    apply = _rand((B,), x, generator) < p
    r = _uniform(B, roughness, x, generator)
    maps = diamond_square(B * C, H, W, r.repeat_interleave(C), generator=generator, device=x.device)
    out = ((x.float() - 0.5) * (4 * maps.view(B, C, H, W)) + 0.5).clamp(0, 1)
    return _keep(apply, out.to(x.dtype), x)


# ═════════════════════════════════════════════ colour ops ══
def channel_shuffle(x: Tensor, *, p: float = 0.5, generator: Optional[torch.Generator] = None) -> Tensor:
    """kornia RandomChannelShuffle: with probability p, permute the channels of a sample by a
    uniformly random permutation π (drawn per sample): ``x'_c = x_{π(c)}``. (B, 3, H, W) → same."""
    _check_images(x, "channel_shuffle")
    B, C, H, W = x.shape
    apply = _rand((B,), x, generator) < p
    perm = _rand((B, C), x, generator).argsort(dim=1)  # uniform over the C! permutations
    out = x.gather(1, perm.view(B, C, 1, 1).expand(B, C, H, W))
    return _keep(apply, out, x)


def grayscale(x: Tensor) -> Tensor:
    """Luma replicated to 3 channels: ``x'_c = 0.299 R + 0.587 G + 0.114 B`` for every c
    (ITU-R 601-2, PIL's "L"). (B, 3, H, W) → same."""
    _check_images(x, "grayscale")
    return _gray(x).expand_as(x).contiguous()


def posterize(x: Tensor, bits) -> Tensor:
    """Keep the top ``bits`` bits of each 8-bit value (torchvision posterize on uint8):
    ``q = round(255·x)``, ``x' = (q AND (256 − 2^(8−b))) / 255 = floor(q / 2^(8−b))·2^(8−b) / 255``.

    ``bits``: int in 1..8 or a (B,) tensor (per sample). (B, 3, H, W) → same; outputs lie on the
    uint8 grid (k/255)."""
    _check_images(x, "posterize")
    if isinstance(bits, Tensor):
        step = torch.pow(2.0, 8 - bits.to(device=x.device, dtype=torch.float32)).view(-1, 1, 1, 1)
    else:
        if not 1 <= int(bits) <= 8:
            raise ValueError(f"posterize: bits={bits} must be in 1..8")
        step = float(2 ** (8 - int(bits)))
    q = _to_u8_levels(x.float())
    return (torch.floor(q / step) * step / 255.0).to(x.dtype)


def solarize(x: Tensor, threshold) -> Tensor:
    """Invert the pixels at or above the threshold t: ``x' = 1 − x if x >= t else x``
    (torchvision). ``threshold`` in [0, 1]: float or (B,) tensor. (B, 3, H, W) → same."""
    _check_images(x, "solarize")
    t = threshold.to(x.device, x.dtype).view(-1, 1, 1, 1) if isinstance(threshold, Tensor) else threshold
    return torch.where(x >= t, 1 - x, x)


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel of each image to [0, 1] (torchvision autocontrast):
    ``x'_c = clamp((x_c − min x_c) / (max x_c − min x_c), 0, 1)``; a constant channel is left
    unchanged. (B, 3, H, W) → same."""
    _check_images(x, "autocontrast")
    xf = x.float()
    lo = xf.amin(dim=(2, 3), keepdim=True)
    hi = xf.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, torch.ones_like(hi), 1.0 / (hi - lo).clamp_min(1e-12))
    lo = torch.where(flat, torch.zeros_like(lo), lo)
    return ((xf - lo) * scale).clamp(0, 1).to(x.dtype)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per channel on the 8-bit levels (torchvision ``equalize``, batched).

    With q = round(255·x) and h the 256-bin histogram of one channel of one image:
    step = floor((Σh − h[max q]) / 255); if step = 0 the channel is unchanged, else
    ``lut[v] = min(255, floor((Σ_{u<v} h[u] + floor(step/2)) / step))`` and ``x' = lut[q] / 255``.
    (B, 3, H, W) → same.
    """
    _check_images(x, "equalize")
    B, C, H, W = x.shape
    q = _to_u8_levels(x.float()).long().reshape(B * C, H * W)
    hist = torch.zeros(B * C, 256, device=x.device, dtype=torch.long)
    hist.scatter_add_(1, q, torch.ones_like(q))
    last = hist.gather(1, q.amax(dim=1, keepdim=True))              # count of the top level
    step = torch.div(H * W - last, 255, rounding_mode="floor")      # (BC, 1)
    cum = hist.cumsum(1)
    lut = torch.div(cum + torch.div(step, 2, rounding_mode="floor"), step.clamp_min(1), rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)                  # lut[v] uses Σ_{u<v}
    out = torch.where(step > 0, lut.gather(1, q), q)
    return (out.to(torch.float32) / 255.0).view(B, C, H, W).to(x.dtype)


# ═════════════════════════════════════════════ auto-augment ops ══
#: The op set of TrivialAugmentWide / RandAugment (torchvision order); the index is the op id.
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
_OP = {name: i for i, name in enumerate(OPS)}
_SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color",
           "contrast", "sharpness")
NUM_BINS = 31  # torchvision's num_magnitude_bins
#: Op id of "invert" (x → 1 − x): AutoAugment's policies use it, TrivialAugment/RandAugment do not
#: (they draw from range(len(OPS))).
INVERT = len(OPS)

_TABLES: Dict[Tuple, Tuple[Tensor, Tensor]] = {}


def magnitude_table(kind: str, height: int, width: int, device, num_bins: int = NUM_BINS) -> Tuple[Tensor, Tensor]:
    """(magnitudes (len(OPS), num_bins) float32, signed (len(OPS),) bool) on ``device``.

    ``kind="wide"`` (TrivialAugmentWide): shear 0-0.99, translate 0-32 px, rotate 0-135°,
    brightness/color/contrast/sharpness factor offsets 0-0.99, posterize 8→2 bits, solarize
    threshold 1→0. ``kind="rand"`` (RandAugment): shear 0-0.3, translate 0-(150/331)·size px,
    rotate 0-30°, colour offsets 0-0.9, posterize 8→4 bits, solarize 1→0. Bins are
    ``linspace(0, max, num_bins)`` as in torchvision. Cached per (kind, size, device), so the
    host→device copy happens once.
    """
    key = (kind, int(height), int(width), str(torch.device(device)), int(num_bins))
    if key not in _TABLES:
        lin = lambda hi: torch.linspace(0.0, float(hi), num_bins)  # noqa: E731
        zero = torch.zeros(num_bins)
        if kind == "wide":
            shear, tx, ty, rot, col = lin(0.99), lin(32.0), lin(32.0), lin(135.0), lin(0.99)
            post = 8 - torch.round(torch.arange(num_bins) / ((num_bins - 1) / 6))
        elif kind == "rand":
            shear, rot, col = lin(0.3), lin(30.0), lin(0.9)
            tx, ty = lin(150.0 / 331.0 * width), lin(150.0 / 331.0 * height)
            post = 8 - torch.round(torch.arange(num_bins) / ((num_bins - 1) / 4))
        else:
            raise ValueError(f"magnitude_table: kind={kind!r}; expected 'wide' or 'rand'")
        rows = {"identity": zero, "shear_x": shear, "shear_y": shear, "translate_x": tx, "translate_y": ty,
                "rotate": rot, "brightness": col, "color": col, "contrast": col, "sharpness": col,
                "posterize": post.float(), "solarize": torch.linspace(1.0, 0.0, num_bins),
                "autocontrast": zero, "equalize": zero}
        table = torch.stack([rows[o] for o in OPS]).float()
        signed = torch.tensor([o in _SIGNED for o in OPS])
        _TABLES[key] = (table.to(device), signed.to(device))
    return _TABLES[key]


def _affine_warp(x: Tensor, op: Tensor, mag: Tensor) -> Tensor:
    """The geometric ops in one ``grid_sample`` (nearest, zero fill, as torchvision's defaults
    for the auto-augment policies). Coordinates are continuous pixels, origin at the top-left
    image corner, pixel (i, j) centred at (j + ½, i + ½), y down. Each output point p samples
    the input at ``A·p + b``:

    - shear_x(m): (x + m·y, y)       shear_y(m): (x, y + m·x)       (about the corner, torchvision)
    - translate_x(t): (x − t, y)     translate_y(t): (x, y − t)     (content moves by +t px)
    - rotate(θ°): c + R(θ)(p − c), c the image centre, R(θ) = [[cos, −sin], [sin, cos]]
      (counter-clockwise on screen for θ > 0).

    Only one op is active per sample, so the per-op matrices are simply summed onto identity.
    """
    B, C, H, W = x.shape
    f32 = torch.float32
    zero = torch.zeros_like(mag)
    sx = torch.where(op == _OP["shear_x"], mag, zero)
    sy = torch.where(op == _OP["shear_y"], mag, zero)
    tx = torch.where(op == _OP["translate_x"], mag, zero)
    ty = torch.where(op == _OP["translate_y"], mag, zero)
    th = torch.where(op == _OP["rotate"], mag, zero) * (math.pi / 180.0)
    cos, sin = torch.cos(th), torch.sin(th)
    cx, cy = W / 2.0, H / 2.0
    a11, a12, a21, a22 = cos, -sin + sx, sin + sy, cos
    b1 = cx - (cos * cx - sin * cy) - tx
    b2 = cy - (sin * cx + cos * cy) - ty
    px = (torch.arange(W, device=x.device, dtype=f32) + 0.5).view(1, 1, W)
    py = (torch.arange(H, device=x.device, dtype=f32) + 0.5).view(1, H, 1)
    v = lambda t: t.view(B, 1, 1)  # noqa: E731
    xin = v(a11) * px + v(a12) * py + v(b1)
    yin = v(a21) * px + v(a22) * py + v(b2)
    grid = torch.stack([2 * xin / W - 1, 2 * yin / H - 1], dim=-1)  # align_corners=False units
    return F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)


def _sharpness_degenerate(x: Tensor) -> Tensor:
    """torchvision's sharpness base image: interior pixels smoothed by [[1,1,1],[1,5,1],[1,1,1]]/13,
    the one-pixel border kept."""
    C = x.shape[1]
    k = torch.ones(C, 1, 3, 3, device=x.device, dtype=x.dtype)
    k[:, :, 1, 1] = 5.0
    k = k / 13.0
    inner = F.conv2d(x, k, groups=C)
    return F.pad(inner, (1, 1, 1, 1)) + x * F.pad(torch.zeros_like(inner[:1, :1]), (1, 1, 1, 1), value=1.0)


def apply_ops(x: Tensor, op: Tensor, magnitude: Tensor) -> Tensor:
    """Apply op ``OPS[op[b]]`` with magnitude ``magnitude[b]`` to image b, for the whole batch.

    Args:
        x: (B, 3, H, W) float in [0, 1].
        op: (B,) int64 op ids (indices into :data:`OPS`).
        magnitude: (B,) float, in each op's own unit: shear factor m (tan of the shear angle),
            translation in pixels, rotation in degrees, colour factor offset m (factor 1 + m),
            posterize bits (1..8), solarize threshold in [0, 1]; ignored by identity,
            autocontrast, equalize and :data:`INVERT` (1 − x, AutoAugment only).

    Ops (torchvision's float definitions; ``blend(D, f) = clamp(f·x + (1 − f)·D, 0, 1)``):
    geometric ops see :func:`_affine_warp`; brightness ``blend(0, 1+m)``; color (saturation)
    ``blend(gray(x), 1+m)``; contrast ``blend(mean gray(x), 1+m)``; sharpness
    ``blend(smooth(x), 1+m)``; posterize :func:`posterize`; solarize :func:`solarize`;
    autocontrast :func:`autocontrast`; equalize :func:`equalize`.

    Every op is computed for the whole batch and selected per sample with ``torch.where``
    (no gather, no host sync); the result for image b depends on x[b], op[b], magnitude[b] only.
    """
    _check_images(x, "apply_ops")
    dtype = x.dtype
    xf = x.float()
    mag = magnitude.to(device=x.device, dtype=torch.float32)
    out = xf
    sel = lambda *names: sum((op == _OP[n]) for n in names).bool()  # noqa: E731

    geo = sel("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
    out = _keep(geo, _affine_warp(xf, op, mag), out)

    blend = sel("brightness", "color", "contrast", "sharpness")
    gray = _gray(xf)
    v = lambda t: t.view(-1, 1, 1, 1)  # noqa: E731
    deg = torch.where(v(op == _OP["color"]), gray, torch.zeros_like(gray))
    deg = torch.where(v(op == _OP["contrast"]), gray.mean(dim=(1, 2, 3), keepdim=True).expand_as(gray), deg)
    deg = torch.where(v(op == _OP["sharpness"]), _sharpness_degenerate(xf), deg)
    f = v(1.0 + mag)
    out = _keep(blend, (f * xf + (1 - f) * deg).clamp(0, 1), out)

    is_post = op == _OP["posterize"]
    bits = torch.where(is_post, mag, torch.full_like(mag, 8.0)).clamp(1, 8)
    out = _keep(is_post, posterize(xf, bits), out)

    is_sol = op == _OP["solarize"]
    thr = torch.where(is_sol, mag, torch.full_like(mag, 2.0))   # 2 > any pixel: no-op elsewhere
    out = _keep(is_sol, solarize(xf, thr), out)

    out = _keep(op == _OP["autocontrast"], autocontrast(xf), out)
    out = _keep(op == _OP["equalize"], equalize(xf), out)
    out = _keep(op == INVERT, 1.0 - xf, out)
    return out.to(dtype)


def trivial_augment(x: Tensor, *, generator: Optional[torch.Generator] = None,
                    num_bins: int = NUM_BINS) -> Tensor:
    """TrivialAugmentWide (Müller & Hutter 2021; torchvision): per image, one op drawn uniformly
    from :data:`OPS`, a magnitude bin drawn uniformly from 0..num_bins−1 (table
    ``magnitude_table("wide")``), and for signed ops a random sign. (B, 3, H, W) → same."""
    _check_images(x, "trivial_augment")
    B, _, H, W = x.shape
    table, signed = magnitude_table("wide", H, W, x.device, num_bins)
    op = torch.randint(0, len(OPS), (B,), generator=generator, device=x.device)
    b = torch.randint(0, num_bins, (B,), generator=generator, device=x.device)
    neg = torch.randint(0, 2, (B,), generator=generator, device=x.device).bool() & signed[op]
    mag = table[op, b]
    return apply_ops(x, op, torch.where(neg, -mag, mag))


def rand_augment(x: Tensor, *, n: int = 2, m: int = 9, generator: Optional[torch.Generator] = None,
                 num_bins: int = NUM_BINS) -> Tensor:
    """RandAugment (Cubuk et al. 2020; torchvision): ``n`` times in a row, each image gets an op
    drawn uniformly from :data:`OPS` at the fixed magnitude bin ``m`` (0..num_bins−1, table
    ``magnitude_table("rand")``) with a random sign for signed ops. (B, 3, H, W) → same."""
    _check_images(x, "rand_augment")
    if not 0 <= int(m) < num_bins:
        raise ValueError(f"rand_augment: m={m} must be in 0..{num_bins - 1}")
    B, _, H, W = x.shape
    table, signed = magnitude_table("rand", H, W, x.device, num_bins)
    for _ in range(int(n)):
        op = torch.randint(0, len(OPS), (B,), generator=generator, device=x.device)
        neg = torch.randint(0, 2, (B,), generator=generator, device=x.device).bool() & signed[op]
        mag = table[op, int(m)]
        x = apply_ops(x, op, torch.where(neg, -mag, mag))
    return x


#: AutoAugment's CIFAR-10 policy (Cubuk et al. 2019; torchvision's AutoAugmentPolicy.CIFAR10):
#: 25 sub-policies of two (op, probability, magnitude bin of 0..9 or None) each.
AUTOAUGMENT_CIFAR10 = (
    (("invert", 0.1, None), ("contrast", 0.2, 6)), (("rotate", 0.7, 2), ("translate_x", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)), (("shear_y", 0.5, 8), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.5, None), ("equalize", 0.9, None)), (("shear_y", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)), (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, None), ("equalize", 0.5, None)), (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translate_x", 0.5, 8)), (("equalize", 0.3, None), ("autocontrast", 0.4, None)),
    (("translate_y", 0.4, 3), ("sharpness", 0.2, 6)), (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, None)), (("equalize", 0.2, None), ("autocontrast", 0.6, None)),
    (("equalize", 0.2, None), ("equalize", 0.6, None)), (("color", 0.9, 9), ("equalize", 0.6, None)),
    (("autocontrast", 0.8, None), ("solarize", 0.2, 8)), (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, None)), (("translate_y", 0.9, 9), ("translate_y", 0.7, 9)),
    (("autocontrast", 0.9, None), ("solarize", 0.8, 3)), (("equalize", 0.8, None), ("invert", 0.1, None)),
    (("translate_y", 0.7, 9), ("autocontrast", 0.9, None)),
)
AUTOAUGMENT_BINS = 10  # torchvision's AutoAugment magnitude bins (RandAugment's ranges)


def _policy_tensors(policy, device):
    op = torch.tensor([[INVERT if o == "invert" else _OP[o] for o, _, _ in sp] for sp in policy], device=device)
    prob = torch.tensor([[p for _, p, _ in sp] for sp in policy], device=device)
    bins = torch.tensor([[b or 0 for _, _, b in sp] for sp in policy], device=device)
    return op, prob, bins


def auto_augment(x: Tensor, *, generator: Optional[torch.Generator] = None,
                 policy=AUTOAUGMENT_CIFAR10) -> Tensor:
    """AutoAugment (torchvision's semantics): per image one sub-policy drawn uniformly; each of its
    two ops applied with its probability, at its magnitude bin of ``magnitude_table("rand",
    num_bins=10)``, with a random sign for signed ops. (B, 3, H, W) in [0, 1] → same."""
    _check_images(x, "auto_augment")
    B, _, H, W = x.shape
    table, signed = magnitude_table("rand", H, W, x.device, AUTOAUGMENT_BINS)
    pol_op, pol_p, pol_bin = _policy_tensors(policy, x.device)
    k = torch.randint(0, len(policy), (B,), generator=generator, device=x.device)
    for j in range(2):
        on = torch.rand(B, generator=generator, device=x.device) < pol_p[k, j]
        neg = torch.randint(0, 2, (B,), generator=generator, device=x.device).bool()
        op = torch.where(on, pol_op[k, j], torch.zeros_like(k))          # 0 = identity
        known = op < len(OPS)
        row = torch.where(known, op, torch.zeros_like(op))
        mag = torch.where(known, table[row, pol_bin[k, j]], torch.zeros(B, device=x.device))
        neg = neg & known & signed[row]
        x = apply_ops(x, op, torch.where(neg, -mag, mag))
    return x


# ═════════════════════════════════════════════ regularisers ══
def cutout(x: Tensor, size: int, *, generator: Optional[torch.Generator] = None, fill: float = 0.0) -> Tensor:
    """Cutout (DeVries & Taylor 2017): per image, a centre (cy, cx) ~ U{0..H−1} × U{0..W−1} and
    the square rows [cy − ⌊L/2⌋, cy − ⌊L/2⌋ + L) × the same for columns, clipped to the image,
    set to ``fill`` (0 = black in [0,1] pixel units). L = ``size`` pixels. (B, 3, H, W) → same."""
    _check_images(x, "cutout")
    B, _, H, W = x.shape
    L = int(size)
    cy = torch.randint(0, H, (B, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, W, (B, 1, 1), generator=generator, device=x.device)
    y0, x0 = cy - L // 2, cx - L // 2
    rows = torch.arange(H, device=x.device).view(1, H, 1)
    cols = torch.arange(W, device=x.device).view(1, 1, W)
    hole = (rows >= y0) & (rows < y0 + L) & (cols >= x0) & (cols < x0 + L)
    return torch.where(hole.unsqueeze(1), torch.full_like(x, fill), x)


def _gamma(a: float, shape, like: Tensor, generator, candidates: int = 12) -> Tensor:
    """Gamma(a, 1) draws by Marsaglia & Tsang (2000) with a fixed number of proposals (first
    accepted wins; each is accepted with probability > 0.95, so all fail with probability
    < 0.05^12), boosted by U^(1/a) for a < 1. Sync-free and generator-driven."""
    boost = a < 1.0
    d = (a + 1.0 if boost else a) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn(*shape, candidates, generator=generator, device=like.device)
    u = torch.rand(*shape, candidates, generator=generator, device=like.device)
    v = (1 + c * z) ** 3
    ok = (v > 0) & (torch.log(u.clamp_min(1e-30)) < 0.5 * z * z + d - d * v + d * torch.log(v.clamp_min(1e-30)))
    first = ok.int().argmax(dim=-1, keepdim=True)       # first accepted proposal
    g = d * v.gather(-1, first).squeeze(-1)
    g = torch.where(ok.any(dim=-1), g, torch.full_like(g, d))
    if boost:
        g = g * torch.rand(*shape, generator=generator, device=like.device).clamp_min(1e-30) ** (1.0 / a)
    return g


def sample_beta(alpha: float, beta: float, shape: Sequence[int], *, device=None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Beta(α, β) draws as X / (X + Y), X ~ Gamma(α), Y ~ Gamma(β), on ``device`` from
    ``generator`` (torch's Beta distribution takes no generator). α, β > 0."""
    if alpha <= 0 or beta <= 0:
        raise ValueError(f"sample_beta: α={alpha}, β={beta} must be > 0")
    like = torch.empty(0, device=device if device is not None else
                       (generator.device if generator is not None else "cpu"))
    xa = _gamma(float(alpha), tuple(shape), like, generator)
    xb = _gamma(float(beta), tuple(shape), like, generator)
    return xa / (xa + xb).clamp_min(1e-30)


def _one_hot(y: Tensor, num_classes: int) -> Tensor:
    return F.one_hot(y, num_classes).float() if y.dim() == 1 else y.float()


def mixup(x: Tensor, y: Tensor, num_classes: int, alpha: float = 1.0, *,
          generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """Mixup (Zhang et al. 2018, reference code): one λ ~ Beta(α, α) per batch and a random
    permutation π of the batch; ``x' = λ·x + (1 − λ)·x[π]``, ``y' = λ·onehot(y) + (1 − λ)·onehot(y[π])``.

    x: (B, 3, H, W); y: (B,) int64 labels (or (B, K) soft labels). Returns (x', y' (B, K) float32,
    rows summing to 1)."""
    _check_images(x, "mixup")
    B = x.shape[0]
    lam = sample_beta(alpha, alpha, (), device=x.device, generator=generator)
    perm = torch.randperm(B, generator=generator, device=x.device)
    yh = _one_hot(y, num_classes)
    xm = (lam * x.float() + (1 - lam) * x.float()[perm]).to(x.dtype)
    return xm, lam * yh + (1 - lam) * yh[perm]


def cutmix(x: Tensor, y: Tensor, num_classes: int, alpha: float = 1.0, *, p: float = 1.0,
           generator: Optional[torch.Generator] = None) -> Tuple[Tensor, Tensor]:
    """CutMix (Yun et al. 2019, reference code): with probability p for the batch, λ ~ Beta(α, α),
    a random permutation π and one box for the batch: side fractions √(1 − λ)
    (w = ⌊W·√(1 − λ)⌋, h likewise), centre (cy, cx) uniform over the pixels, rows
    [cy − ⌊h/2⌋, cy + ⌊h/2⌋) × columns [cx − ⌊w/2⌋, cx + ⌊w/2⌋) clipped to the image; inside the box
    ``x' = x[π]``, labels ``λ'·onehot(y) + (1 − λ')·onehot(y[π])`` with λ' = 1 − box area / (H·W)
    (the area actually pasted). Otherwise x and onehot(y) unchanged.

    x: (B, 3, H, W); y: (B,) int64 (or (B, K) soft). Returns (x', y' (B, K) float32)."""
    _check_images(x, "cutmix")
    B, _, H, W = x.shape
    dev = x.device
    apply = torch.rand((), generator=generator, device=dev) < p
    lam = sample_beta(alpha, alpha, (), device=dev, generator=generator)
    perm = torch.randperm(B, generator=generator, device=dev)
    cut = torch.sqrt(1.0 - lam)
    cw, ch = torch.floor(W * cut).long(), torch.floor(H * cut).long()
    cx = torch.randint(0, W, (), generator=generator, device=dev)
    cy = torch.randint(0, H, (), generator=generator, device=dev)
    x0, x1 = (cx - cw // 2).clamp(0, W), (cx + cw // 2).clamp(0, W)
    y0, y1 = (cy - ch // 2).clamp(0, H), (cy + ch // 2).clamp(0, H)
    rows = torch.arange(H, device=dev).view(H, 1)
    cols = torch.arange(W, device=dev).view(1, W)
    box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1) & apply
    lam_adj = 1.0 - box.sum().float() / float(H * W)
    xm = torch.where(box.view(1, 1, H, W), x[perm], x)
    yh = _one_hot(y, num_classes)
    return xm, lam_adj * yh + (1 - lam_adj) * yh[perm]


def gaussian_blur(x: Tensor, sigma: float, kernel_size: int) -> Tensor:
    """Gaussian filter (torchvision gaussian_blur): separable depthwise convolution with the
    normalised 1-D kernel ``g_t ∝ exp(−t² / 2σ²)``, t = −k//2..k//2, reflect padding; σ in pixels,
    k odd. Constant images are preserved exactly up to rounding. (B, 3, H, W) → same."""
    _check_images(x, "gaussian_blur")
    k = int(kernel_size)
    if k < 1 or k % 2 == 0 or sigma <= 0:
        raise ValueError(f"gaussian_blur: kernel_size={kernel_size} must be odd >= 1 and sigma={sigma} > 0")
    if k == 1:
        return x
    B, C, H, W = x.shape
    t = torch.arange(k, device=x.device, dtype=torch.float32) - (k // 2)
    g = torch.exp(-(t * t) / (2.0 * float(sigma) ** 2))
    g = g / g.sum()
    r = k // 2
    xf = F.pad(x.float(), (r, r, r, r), mode="reflect")
    xf = F.conv2d(xf, g.view(1, 1, 1, k).expand(C, 1, 1, k), groups=C)
    xf = F.conv2d(xf, g.view(1, 1, k, 1).expand(C, 1, k, 1), groups=C)
    return xf.to(x.dtype)


__all__ = ["OPS", "NUM_BINS", "diamond_square", "plasma_brightness", "plasma_contrast", "channel_shuffle",
           "grayscale", "posterize", "solarize", "autocontrast", "equalize", "magnitude_table", "apply_ops",
           "trivial_augment", "rand_augment", "auto_augment", "cutout", "mixup", "cutmix", "gaussian_blur",
           "sample_beta"]
