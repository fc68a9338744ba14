"""Encoding, DDIM inversion and noising on a real tiny UNet."""

from __future__ import annotations

import copy

import pytest
import torch

from seediff_core.latents import (
    LatentCache,
    add_noise,
    ddim_invert,
    ddim_regenerate,
    encode_image,
    inversion_timesteps,
    predict_noise,
)


@pytest.fixture(scope="module")
def parts(tiny_model):
    g = torch.Generator().manual_seed(0)
    return tiny_model, torch.randn(1, 4, 16, 16, generator=g) * 0.8, torch.randn(1, 77, 32, generator=g)


def test_timesteps_end_at_t_and_increase():
    assert inversion_timesteps(200, 10)[-1] == 200
    assert inversion_timesteps(200, 10) == sorted(set(inversion_timesteps(200, 10)))
    assert len(inversion_timesteps(200, 10)) == 10
    assert inversion_timesteps(5, 10) == [1, 2, 3, 4, 5]  # never more steps than timesteps
    assert inversion_timesteps(0, 10) == []


def test_bookkeeping_is_exact_when_the_unet_predicts_zero_noise(parts):
    model, z0, context = parts
    unet = copy.deepcopy(model.unet)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    zt = ddim_invert(unet, model.scheduler, z0, context, 300, 7)
    alpha = model.scheduler.alphas_cumprod[300]
    assert torch.allclose(zt, alpha.sqrt() * z0, atol=1e-5)  # eps = 0: a pure rescaling
    assert torch.allclose(ddim_regenerate(unet, model.scheduler, zt, context, 300, 7), z0, atol=1e-5)


def test_inversion_then_regeneration_returns_close_to_the_start(parts):
    model, z0, context = parts
    errors = []
    for steps in (10, 50):
        zt = ddim_invert(model.unet, model.scheduler, z0, context, 200, steps)
        assert not torch.allclose(zt, z0, atol=0.05)  # it did move
        back = ddim_regenerate(model.unet, model.scheduler, zt, context, 200, steps)
        errors.append(float((back - z0).abs().max()))
    assert errors[0] < 0.05 * float(z0.abs().max())
    assert errors[1] < errors[0]  # finer steps invert more exactly


def test_v_prediction_is_converted_to_noise(tiny_sd2_dir):
    from seediff_core import load_model

    model = load_model(str(tiny_sd2_dir), device="cpu")
    assert model.scheduler.config.prediction_type == "v_prediction"
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 4, 16, 16, generator=g)
    context = torch.randn(1, 77, 48, generator=g)
    t = 400
    with torch.no_grad():
        v = model.unet(latents, t, encoder_hidden_states=context).sample
    eps = predict_noise(model.unet, model.scheduler, latents, t, context)
    alpha = model.scheduler.alphas_cumprod[t]
    # v = sqrt(a) eps - sqrt(1 - a) x0 and x_t = sqrt(a) x0 + sqrt(1 - a) eps
    x0 = (latents - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    assert torch.allclose(alpha.sqrt() * eps - (1 - alpha).sqrt() * x0, v, atol=1e-4)


def test_one_step_noising_is_seeded_and_follows_the_schedule(parts):
    model, z0, _ = parts
    a = add_noise(model.scheduler, z0, 250, seed=7)
    b = add_noise(model.scheduler, z0, 250, seed=7)
    c = add_noise(model.scheduler, z0, 250, seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(a, model.scheduler.add_noise(z0, noise, torch.tensor([250])), atol=1e-5)


def test_encoding_is_deterministic_and_scaled(tiny_model):
    pixels = torch.rand(1, 3, 128, 128) * 2 - 1
    first, second = encode_image(tiny_model.vae, pixels), encode_image(tiny_model.vae, pixels)
    assert first.shape == (1, 4, 16, 16)
    assert torch.equal(first, second)
    raw = tiny_model.vae.encode(pixels).latent_dist.mean
    assert torch.allclose(first, raw * tiny_model.vae.config.scaling_factor)


def test_latent_cache_is_lru():
    cache = LatentCache(size=2)
    cache.put("a", torch.zeros(1))
    cache.put("b", torch.ones(1))
    assert cache.get("a") is not None  # a is now the most recent
    cache.put("c", torch.ones(1))
    assert cache.get("b") is None and cache.get("a") is not None and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    off = LatentCache(size=0)
    off.put("a", torch.zeros(1))
    assert off.get("a") is None
