"""Mixup and CutMix on the device, as pure jittable functions (timm's ``Mixup`` semantics).

:func:`mix` pairs each example ``i`` of a batch with example ``B - 1 - i`` (the batch flipped, as timm
does) and returns the mixed images with soft targets for ``optax.softmax_cross_entropy``::

    out = mix(rng, images, labels, num_classes, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    loss = optax.softmax_cross_entropy(model(out.images), out.targets).mean()

Per example (``mode='elem'``, timm's per-element mode) or once per batch (``mode='batch'``):

- with probability ``prob`` the example is mixed, else it stays as it is (λ = 1);
- when both alphas are > 0, CutMix is chosen with probability ``switch_prob``, else Mixup; an alpha of 0
  disables that kind (both 0: images unchanged, targets are the smoothed one-hot labels);
- Mixup: λ ~ Beta(mixup_alpha, mixup_alpha), image ``λ·x + (1-λ)·x_flipped``;
- CutMix: λ ~ Beta(cutmix_alpha, cutmix_alpha) gives a box of sides ``int(H·sqrt(1-λ))`` by
  ``int(W·sqrt(1-λ))`` centred on a uniform pixel (timm's ``rand_bbox``, the same integer halving), clipped
  to the image; the box's pixels come from ``x_flipped``, and λ is corrected to ``1 - box area / (H·W)``
  (timm's ``correct_lam``);
- targets: the one-hot labels smoothed as timm's ``mixup_target`` (on ``1 - s + s/C``, off ``s/C``), then
  ``λ·y + (1-λ)·y_flipped`` with the (corrected) λ.

The alphas, probabilities, ``mode`` and ``num_classes`` are static Python values (the branches on them
happen at trace time); everything drawn from ``rng`` stays on the device, so ``mix`` runs inside a jitted
or pmapped step. Under ``pmap`` fold the device index into ``rng`` for independent draws per device.
An odd batch pairs its middle example with itself (unchanged); timm requires an even batch. Not
provided: timm's ``'pair'`` mode and ``cutmix_minmax`` boxes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

MODES = ("elem", "batch")


class MixResult(NamedTuple):
    """What :func:`mix` returns.

    Attributes:
      images: ``(B, H, W, C)`` mixed images, the input's dtype.
      targets: ``(B, num_classes)`` float32 soft targets (each row sums to 1).
      lam: ``(B,)`` float32 weight of each example's own image and label (1 = not mixed); for CutMix the
        corrected value, ``1 - box area / (H·W)``.
      cutmix: ``(B,)`` bool, CutMix was chosen for the example (else Mixup, or no mixing when ``lam == 1``).
    """

    images: jax.Array
    targets: jax.Array
    lam: jax.Array
    cutmix: jax.Array


def _check_options(
    mixup_alpha: float, cutmix_alpha: float, switch_prob: float, prob: float, mode: str
) -> None:
    if mode not in MODES:
        raise ValueError(f"mix: mode={mode!r} is not one of {MODES}.")
    if mixup_alpha < 0 or cutmix_alpha < 0:
        raise ValueError(f"mix: alphas must be >= 0 (0 disables), got {mixup_alpha} and {cutmix_alpha}.")
    if not (0 <= switch_prob <= 1 and 0 <= prob <= 1):
        raise ValueError(f"mix: switch_prob={switch_prob} and prob={prob} must lie in [0, 1].")


def draw_params(
    rng: jax.Array, n: int, mixup_alpha: float, cutmix_alpha: float, switch_prob: float, prob: float
) -> tuple[jax.Array, jax.Array]:
    """timm's ``_params_per_elem``: λ ``(n,)`` float32 (before CutMix's correction) and CutMix ``(n,)`` bool.

    λ is Beta(alpha, alpha) of the kind chosen, or 1 with probability ``1 - prob``. Both alphas must not
    be 0 (then there is nothing to draw).
    """
    k_switch, k_mixup, k_cutmix, k_prob = jax.random.split(rng, 4)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch, (n,)) < switch_prob
        lam = jnp.where(
            use_cutmix,
            jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha, (n,)),
            jax.random.beta(k_mixup, mixup_alpha, mixup_alpha, (n,)),
        )
    elif mixup_alpha > 0:
        use_cutmix = jnp.zeros((n,), bool)
        lam = jax.random.beta(k_mixup, mixup_alpha, mixup_alpha, (n,))
    else:
        use_cutmix = jnp.ones((n,), bool)
        lam = jax.random.beta(k_cutmix, cutmix_alpha, cutmix_alpha, (n,))
    if prob < 1:
        lam = jnp.where(jax.random.uniform(k_prob, (n,)) < prob, lam, 1.0)
    return lam.astype(jnp.float32), use_cutmix


def cutmix_masks(rng: jax.Array, lam: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """timm's ``rand_bbox`` + ``correct_lam`` for each λ ``(n,)``: the box masks ``(n, H, W)`` bool (True:
    the pixel comes from the paired image) and the corrected λ ``(n,)`` float32."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)  # int(): ratio >= 0, so truncation is floor
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    k_y, k_x = jax.random.split(rng)
    cy = jax.random.randint(k_y, lam.shape, 0, height)
    cx = jax.random.randint(k_x, lam.shape, 0, width)
    y_lo, y_hi = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x_lo, x_hi = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    rows, cols = jnp.arange(height), jnp.arange(width)
    in_y = (rows >= y_lo[:, None]) & (rows < y_hi[:, None])
    in_x = (cols >= x_lo[:, None]) & (cols < x_hi[:, None])
    area = (y_hi - y_lo) * (x_hi - x_lo)
    corrected = 1.0 - area.astype(jnp.float32) / float(height * width)
    return in_y[:, :, None] & in_x[:, None, :], corrected


def mix_targets(
    labels: jax.Array, num_classes: int, lam: jax.Array, label_smoothing: float = 0.0
) -> jax.Array:
    """timm's ``mixup_target``: smoothed one-hot ``labels (B,)`` mixed with the flipped batch's by
    ``lam (B,)`` -> ``(B, num_classes)`` float32."""
    targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    if label_smoothing > 0:
        targets = optax.smooth_labels(targets, label_smoothing)
    lam = lam[:, None]
    return lam * targets + (1.0 - lam) * targets[::-1]


def mix(
    rng: jax.Array,
    images: jax.Array,
    labels: jax.Array,
    num_classes: int,
    *,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float = 0.5,
    prob: float = 1.0,
    label_smoothing: float = 0.0,
    mode: str = "elem",
) -> MixResult:
    """Mixup / CutMix of ``images (B, H, W, C)`` with their flipped batch; see the module docstring.

    Args:
      rng: a PRNG key.
      images: ``(B, H, W, C)`` floating-point images (normalised or not).
      labels: ``(B,)`` int class indices.
      num_classes: the width of the targets.
      mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind.
      switch_prob: probability of CutMix when both kinds are enabled.
      prob: probability that an example (``'elem'``) or the batch (``'batch'``) is mixed at all.
      label_smoothing: applied to the one-hot labels before mixing.
      mode: ``'elem'`` (λ, kind and box drawn per example) or ``'batch'`` (one for the whole batch).

    Returns:
      :class:`MixResult` ``(images, targets (B, num_classes), lam (B,), cutmix (B,))``.
    """
    _check_options(mixup_alpha, cutmix_alpha, switch_prob, prob, mode)
    batch, height, width = images.shape[:3]
    if mixup_alpha == 0 and cutmix_alpha == 0:
        lam, use_cutmix = jnp.ones((batch,), jnp.float32), jnp.zeros((batch,), bool)
        return MixResult(images, mix_targets(labels, num_classes, lam, label_smoothing), lam, use_cutmix)
    k_params, k_box = jax.random.split(rng)
    n = batch if mode == "elem" else 1
    lam, use_cutmix = draw_params(k_params, n, mixup_alpha, cutmix_alpha, switch_prob, prob)
    flipped = images[::-1]
    out = images
    if mixup_alpha > 0:
        weight = lam[:, None, None, None]  # float32: bfloat16 images are blended in float32, then cast back
        out = (images * weight + flipped * (1 - weight)).astype(images.dtype)
    if cutmix_alpha > 0:
        masks, corrected = cutmix_masks(k_box, lam, height, width)
        pasted = jnp.where(masks[..., None], flipped, images)
        out = jnp.where(use_cutmix[:, None, None, None], pasted, out)
        lam = jnp.where(use_cutmix, corrected, lam)
    lam, use_cutmix = jnp.broadcast_to(lam, (batch,)), jnp.broadcast_to(use_cutmix, (batch,))
    return MixResult(out, mix_targets(labels, num_classes, lam, label_smoothing), lam, use_cutmix)
