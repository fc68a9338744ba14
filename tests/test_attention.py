"""Attention capture on a real (tiny, random) diffusers UNet with SD1.5's topology."""

from __future__ import annotations

import pytest
import torch

from seediff_core.attention import CROSS, SELF, AttentionStore, capture_attention, unet_layers


@pytest.fixture(scope="module")
def unet(tiny_model):
    return tiny_model.unet


def _inputs(unet, batch=1, h=16, w=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, h, w, generator=g)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, generator=g)
    return latents, context


def test_layer_map_matches_sd15(unet):
    layers = unet_layers(unet)
    assert len(layers) == 32
    assert sum(layer.kind == SELF for layer in layers) == 16
    by_name = {layer.name: layer for layer in layers}
    assert by_name["down_blocks.0.attentions.0.transformer_blocks.0.attn1"].factor == 1
    assert by_name["down_blocks.2.attentions.1.transformer_blocks.0.attn2"].factor == 4
    assert by_name["mid_block.attentions.0.transformer_blocks.0.attn1"].factor == 8
    assert by_name["up_blocks.1.attentions.0.transformer_blocks.0.attn1"].factor == 4
    assert by_name["up_blocks.3.attentions.2.transformer_blocks.0.attn2"].factor == 1
    assert [layer.order for layer in layers] == list(range(32))
    assert layers[0].block == "down" and layers[-1].block == "up"
    assert sum(layer.factor == 1 for layer in layers) == 10  # 5 self + 5 cross on the latent grid


def test_captured_maps_have_right_shapes_and_rows_sum_to_one(unet):
    latents, context = _inputs(unet, h=16, w=24)  # non-square on purpose
    store = AttentionStore()
    with torch.no_grad(), capture_attention(unet, store, lambda layer: True, chunk=100):
        unet(latents, 10, encoder_hidden_states=context)
    assert len(store.sums) == 32
    for name, layer in store.layers.items():
        h, w = 16 // layer.factor, 24 // layer.factor
        probs = store.mean(name)
        keys = 77 if layer.kind == CROSS else h * w
        assert probs.shape == (1, h * w, keys), name
        assert store.grid[name] == (h, w)
        assert torch.allclose(probs.sum(-1), torch.ones(1, h * w), atol=1e-5), name
        assert probs.dtype == torch.float32


def test_output_is_unchanged_by_capture(unet):
    latents, context = _inputs(unet, batch=2)
    with torch.no_grad():
        plain = unet(latents, 500, encoder_hidden_states=context).sample
        with capture_attention(unet, AttentionStore(), lambda layer: True, chunk=64):
            captured = unet(latents, 500, encoder_hidden_states=context).sample
    assert torch.allclose(plain, captured, atol=1e-5)


def test_only_selected_layers_are_replaced_and_all_are_restored(unet):
    before = dict(unet.attn_processors)
    store = AttentionStore()
    pick = lambda layer: layer.kind == CROSS and layer.factor == 4  # noqa: E731
    with pytest.raises(ZeroDivisionError):
        with capture_attention(unet, store, pick):
            inside = dict(unet.attn_processors)
            changed = [k for k in before if inside[k] is not before[k]]
            assert len(changed) == 5 and all("attn2" in k for k in changed)
            1 / 0
    after = dict(unet.attn_processors)
    assert all(after[k] is before[k] for k in before)
    assert not getattr(unet, "_seediff_capturing")


def test_entering_twice_is_refused(unet):
    with capture_attention(unet, AttentionStore(), lambda layer: True):
        with pytest.raises(RuntimeError, match="already inside"):
            with capture_attention(unet, AttentionStore(), lambda layer: True):
                pass


def test_empty_selection_is_refused(unet):
    with pytest.raises(RuntimeError, match="picked no attention layer"):
        with capture_attention(unet, AttentionStore(), lambda layer: False):
            pass


def test_guidance_half_is_selected_explicitly(unet):
    latents, context = _inputs(unet, batch=2, seed=3)
    half = AttentionStore(keep=slice(1, None))  # [unconditional, conditional]: keep the second
    single = AttentionStore()
    with torch.no_grad():
        with capture_attention(unet, half, lambda layer: layer.kind == CROSS):
            unet(latents, 100, encoder_hidden_states=context)
        with capture_attention(unet, single, lambda layer: layer.kind == CROSS):
            unet(latents[1:], 100, encoder_hidden_states=context[1:])
    for name in single.sums:
        assert half.sums[name].shape[0] == 1
        assert torch.allclose(half.mean(name), single.mean(name), atol=1e-5)


def test_running_mean_over_calls_and_disabled_steps(unet):
    latents, context = _inputs(unet)
    store = AttentionStore()
    pick = lambda layer: layer.kind == SELF and layer.factor == 2  # noqa: E731
    with torch.no_grad(), capture_attention(unet, store, pick):
        for t in (100, 200):
            unet(latents, t, encoder_hidden_states=context)
        store.enabled = False
        unet(latents, 300, encoder_hidden_states=context)
    name = store.names(kind=SELF, factor=2)[0]
    assert store.calls[name] == 2
    one = AttentionStore()
    with torch.no_grad(), capture_attention(unet, one, pick):
        unet(latents, 100, encoder_hidden_states=context)
    two = AttentionStore()
    with torch.no_grad(), capture_attention(unet, two, pick):
        unet(latents, 200, encoder_hidden_states=context)
    assert torch.allclose(store.mean(name), (one.mean(name) + two.mean(name)) / 2, atol=1e-6)


def test_unknown_layer_names_the_captured_ones(unet):
    with pytest.raises(KeyError, match="was not captured"):
        AttentionStore().mean("nope")
