"""Bringing an image's latent to a noise level: DDIM inversion, one-step noising, or the clean latent.

All functions take latents already multiplied by the VAE's scaling factor, shaped (B, C, h, w).
The noise schedule is the model's own (``scheduler.alphas_cumprod``); the DDIM steps are written
out here so that inversion and regeneration share one bookkeeping, which the tests check exactly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import torch


@torch.no_grad()
def encode_image(vae, pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [-1, 1] -> (B, C, H/f, W/f) posterior mean x scaling factor (deterministic)."""
    pixels = pixels.to(device=vae.device, dtype=vae.dtype)
    return vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor


def inversion_timesteps(t: int, steps: int) -> list[int]:
    """Timesteps 0 < t_1 < ... < t_steps = t that the inversion visits (evenly spaced)."""
    if steps < 1 or t < 1:
        return [t] if t >= 1 else []
    points = torch.linspace(0, t, steps + 1)[1:].round().long().tolist()
    return sorted({p for p in points if p >= 1})


def _alpha(scheduler, t: int | None) -> torch.Tensor:
    """cumulative alpha at t; t=None is the clean latent (alpha 1)."""
    return torch.tensor(1.0) if t is None else scheduler.alphas_cumprod[t].float()


def predict_noise(unet, scheduler, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
    """The UNet's epsilon estimate, whatever the model predicts (epsilon, v or sample)."""
    out = unet(latents, t, encoder_hidden_states=context).sample.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return out
    alpha = _alpha(scheduler, t).to(out.device)
    if kind == "v_prediction":
        return alpha.sqrt() * out + (1 - alpha).sqrt() * latents.float()
    if kind == "sample":
        return (latents.float() - alpha.sqrt() * out) / (1 - alpha).sqrt()
    raise ValueError(f"unsupported prediction_type {kind!r}")


def ddim_step(latents: torch.Tensor, noise: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM move from noise level ``alpha_from`` to ``alpha_to`` (either direction)."""
    clean = (latents.float() - (1 - alpha_from).sqrt() * noise) / alpha_from.sqrt()
    return alpha_to.sqrt() * clean + (1 - alpha_to).sqrt() * noise


@torch.no_grad()
def ddim_invert(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, t: int, steps: int) -> torch.Tensor:
    """DDIM inversion of clean ``latents`` up to timestep ``t`` in ``steps`` UNet calls.

    Args:
        latents (`torch.Tensor`): (B, C, h, w) clean latents (scaled).
        context (`torch.Tensor`): (B, T, D) text embeddings, usually of the empty prompt (guidance 1).
        t (`int`): target timestep (0..num_train_timesteps-1).
        steps (`int`): number of inversion steps.

    Returns:
        (B, C, h, w) latents at noise level t, in the UNet's dtype.
    """
    current, previous = latents.float(), None
    for target in inversion_timesteps(t, steps):
        # As in null-text inversion, the noise is estimated at the target timestep from the latent we
        # come from; regeneration (plain DDIM sampling) evaluates the same timesteps on the way back.
        noise = predict_noise(unet, scheduler, current.to(unet.dtype), target, context)
        current = ddim_step(current, noise, _alpha(scheduler, previous).to(current.device),
                            _alpha(scheduler, target).to(current.device))
        previous = target
    return current.to(unet.dtype)


@torch.no_grad()
def ddim_regenerate(unet, scheduler, latents: torch.Tensor, context: torch.Tensor, t: int, steps: int) -> torch.Tensor:
    """The inverse of ``ddim_invert``: from noise level ``t`` back to the clean latent."""
    visits = inversion_timesteps(t, steps)
    current = latents.float()
    for i in range(len(visits) - 1, -1, -1):
        source = visits[i]
        target = visits[i - 1] if i > 0 else None
        noise = predict_noise(unet, scheduler, current.to(unet.dtype), source, context)
        current = ddim_step(current, noise, _alpha(scheduler, source).to(current.device),
                            _alpha(scheduler, target).to(current.device))
    return current.to(unet.dtype)


def add_noise(scheduler, latents: torch.Tensor, t: int, seed: int) -> torch.Tensor:
    """One-step noising sqrt(a_t) z0 + sqrt(1 - a_t) eps, with eps drawn from ``seed`` on the CPU
    so the same seed gives the same noise on every device."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    alpha = _alpha(scheduler, t).to(latents.device)
    return (alpha.sqrt() * latents.float() + (1 - alpha).sqrt() * noise).to(latents.dtype)


class LatentCache:
    """A small LRU of tensors: latents keyed by image digest + everything that shaped them (and
    text embeddings keyed by prompt)."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable) -> torch.Tensor | None:
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: torch.Tensor) -> None:
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
