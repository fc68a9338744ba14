"""SeeDiff on hand-built attention whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seediff_core.config import SeediffConfig
from seediff_core.maps import AttentionMaps
from seediff_core.methods import get_method
from seediff_core.methods.seediff import seed_maps

LATENT = 32
IMAGE = 256


def _segmentation(size: int) -> np.ndarray:
    """0 background, 1 a disk, 2 a rectangle, on a size x size grid."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    seg = np.zeros((size, size), dtype=np.int64)
    seg[(xs - 0.3) ** 2 + (ys - 0.35) ** 2 < 0.18**2] = 1
    seg[(xs > 0.58) & (xs < 0.9) & (ys > 0.55) & (ys < 0.85)] = 2
    return seg


def _self_attention(seg: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Rows attend uniformly within their own region, plus a little noise; rows sum to 1."""
    flat = seg.reshape(-1)
    same = (flat[:, None] == flat[None, :]).astype(np.float64)
    attn = same + 0.02 * rng.random(same.shape)
    return torch.from_numpy(attn / attn.sum(axis=1, keepdims=True)).float()


def _cross(seg: np.ndarray, region: int, rng: np.random.Generator, layers: int = 3) -> torch.Tensor:
    """Coarse cross-attention: a blob at the region's centre (covering only part of it) plus noise."""
    ys, xs = np.nonzero(seg == region)
    cy, cx = ys.mean(), xs.mean()
    yy, xx = np.mgrid[0 : seg.shape[0], 0 : seg.shape[1]]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (seg.shape[0] * 0.06) ** 2))
    maps = [blob * rng.uniform(0.5, 1.5) + 0.15 * rng.random(seg.shape) for _ in range(layers)]
    return torch.from_numpy(np.stack(maps)).float() / 77


def _hand_built_maps(labels=("disk", "box"), regions=(1, 2)) -> tuple[AttentionMaps, np.ndarray]:
    rng = np.random.default_rng(0)
    seed_grid = LATENT // 4
    cross = torch.stack([_cross(_segmentation(seed_grid), r, rng) for r in regions], dim=1)  # (layers, K, h, w)
    self_attention = {f: _self_attention(_segmentation(LATENT // f), rng)[None] for f in (4, 2, 1)}
    truth = _segmentation(IMAGE)
    colours = np.array([[90, 90, 90], [200, 40, 40], [40, 60, 210]], dtype=np.float32) / 255
    image = torch.from_numpy(colours[truth]).permute(2, 0, 1).float()
    maps = AttentionMaps(
        labels=list(labels), latent_size=(LATENT, LATENT), content=(0.0, 0.0, 1.0, 1.0), image=image,
        cross={4: cross}, cross_layers={4: ["a", "b", "c"]}, self_attention=self_attention,
        self_layers={f: [f"self{f}"] for f in self_attention},
    )
    return maps, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_seediff_recovers_known_regions():
    maps, truth = _hand_built_maps()
    out = get_method("seediff").segment(maps, SeediffConfig())
    masks = out.masks.numpy()
    assert masks.shape == (2, IMAGE, IMAGE)
    assert _iou(masks[0], truth == 1) >= 0.95
    assert _iou(masks[1], truth == 2) >= 0.95
    assert not (masks[0] & masks[1]).any()
    assert ((out.scores >= 0) & (out.scores <= 1)).all()
    assert out.scores.min() > 0.5  # clean regions give high contrast


def test_seeds_lie_inside_the_region():
    maps, _ = _hand_built_maps()
    grid_seg = _segmentation(LATENT // 4)
    seeds = seed_maps(maps.cross[4], maps.valid((8, 8)), 1e-4, 0.01)
    peak = np.unravel_index(int(seeds[0].argmax()), seeds[0].shape)
    assert grid_seg[peak] == 1


def test_flat_layers_are_damped():
    cross = torch.zeros(2, 1, 8, 8)
    cross[0, 0, 2, 2] = 1.0  # an informative layer
    cross[1, 0] = 0.5
    cross[1, 0, 7, 7] = 0.5001  # nearly flat: variance of its min-max map is tiny only if damped
    cross[1, 0, :, :4] += 1e-7
    valid = torch.ones(8, 8, dtype=torch.bool)
    damped = seed_maps(cross, valid, variance_floor=1.0, flat_weight=0.0)  # every layer "flat", weight 0
    assert torch.count_nonzero(damped) == 0
    kept = seed_maps(cross, valid, variance_floor=1e-4, flat_weight=0.01)
    assert kept[0, 2, 2] == 1.0


def test_padding_is_never_labelled():
    maps, _ = _hand_built_maps()
    maps.content = (0.0, 0.0, 1.0, 0.5)  # bottom half is padding
    out = get_method("seediff").segment(maps, SeediffConfig())
    assert not out.masks[:, IMAGE // 2 + 2 :].any()


def test_missing_factor_is_a_clear_error():
    maps, _ = _hand_built_maps()
    with pytest.raises(ValueError, match="seed_factor"):
        get_method("seediff").segment(maps, SeediffConfig(seed_factor=8, expansion_factors=(8, 4, 2, 1)))


def test_unknown_method_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*seediff"):
        get_method("nope")


def test_expansion_follows_self_attention_not_cross_attention():
    # The cross-attention blob covers only the disk's centre; the mask must reach the disk's rim.
    maps, truth = _hand_built_maps(labels=("disk",), regions=(1,))
    blob = F.interpolate(maps.cross[4].mean(0)[None], size=(IMAGE, IMAGE), mode="bilinear")[0, 0]
    blob_mask = (blob > blob.max() * 0.5).numpy()
    out = get_method("seediff").segment(maps, SeediffConfig())
    assert _iou(blob_mask, truth == 1) < 0.8
    assert _iou(out.masks[0].numpy(), truth == 1) >= 0.95


# Annotator hints (interactive mode)

from seediff_core.hints import Hints  # noqa: E402


def test_a_positive_click_overrides_the_cross_attention_seeds():
    maps, truth = _hand_built_maps(labels=("thing",), regions=(1,))  # attention points at the disk
    maps.hints = {"thing": Hints(positive=((0.74, 0.70),))}  # the annotator clicks the box
    out = get_method("seediff").segment(maps, SeediffConfig())
    assert _iou(out.masks[0].numpy(), truth == 2) >= 0.95


def test_a_negative_click_removes_what_it_resembles():
    maps, truth = _hand_built_maps(labels=("thing",), regions=(1,))
    maps.hints = {"thing": Hints(positive=((0.3, 0.35), (0.74, 0.70)))}
    both = get_method("seediff").segment(maps, SeediffConfig()).masks[0].numpy()
    assert _iou(both, (truth == 1) | (truth == 2)) >= 0.9
    maps.hints = {"thing": Hints(positive=((0.3, 0.35), (0.74, 0.70)), negative=((0.7, 0.65),))}
    out = get_method("seediff").segment(maps, SeediffConfig()).masks[0].numpy()
    assert _iou(out, truth == 1) >= 0.9 and not (out & (truth == 2)).any()


def test_a_box_confines_the_mask_and_finds_seeds_inside_it():
    maps, truth = _hand_built_maps(labels=("thing",), regions=(1,))
    maps.hints = {"thing": Hints(boxes=((0.55, 0.5, 0.95, 0.9),))}
    out = get_method("seediff").segment(maps, SeediffConfig()).masks[0].numpy()
    assert _iou(out, truth == 2) >= 0.95


@pytest.mark.parametrize("kwargs", [{"positive": ((1.2, 0.5),)}, {"negative": ((0.5, -0.1),)},
                                    {"boxes": ((0.5, 0.5, 0.4, 0.9),)}])
def test_bad_hints_are_clear_errors(kwargs):
    with pytest.raises(ValueError, match="hint"):
        Hints(**kwargs)


def test_seed_competition_leaves_an_absent_label_empty():
    maps, truth = _hand_built_maps()
    generator = torch.Generator().manual_seed(0)
    diffuse = maps.cross[4][:, :1].mean() * (1 + 0.3 * torch.rand(maps.cross[4][:, :1].shape, generator=generator))
    maps.cross[4] = torch.cat([maps.cross[4], diffuse], dim=1)  # the prompt names a third, absent thing
    maps.labels = [*maps.labels, "absent"]
    loose = get_method("seediff").segment(maps, SeediffConfig(seed_competition=False, label_per_object=False))
    assert loose.masks[2].any()  # without competition the absent label takes something
    strict = get_method("seediff").segment(maps, SeediffConfig(seed_competition=True, label_per_object=False))
    assert not strict.masks[2].any()
    assert _iou(strict.masks[0].numpy(), truth == 1) >= 0.95 and _iou(strict.masks[1].numpy(), truth == 2) >= 0.95


def test_seed_layers_pick_the_layers_the_seeds_read():
    from seediff_core.attention import CROSS, Layer

    available = [Layer("down_blocks.1.attentions.0.transformer_blocks.0.attn2", CROSS, 2, "down", 0),
                 Layer("up_blocks.2.attentions.0.transformer_blocks.0.attn2", CROSS, 2, "up", 1),
                 Layer("up_blocks.2.attentions.1.transformer_blocks.0.attn2", CROSS, 2, "up", 2),
                 Layer("up_blocks.2.attentions.1.transformer_blocks.0.attn1", "self", 2, "up", 3)]
    method = get_method("seediff")
    pick = lambda **kw: sorted(n.split(".transformer")[0] for n in method.layers(available, SeediffConfig(  # noqa: E731
        seed_factor=2, expansion_factors=(2,), **kw)) if n.endswith("attn2"))
    assert pick() == ["down_blocks.1.attentions.0", "up_blocks.2.attentions.0", "up_blocks.2.attentions.1"]
    assert pick(seed_layers=("up",)) == ["up_blocks.2.attentions.0", "up_blocks.2.attentions.1"]
    assert pick(seed_layers=("up_blocks.2.attentions.1",)) == ["up_blocks.2.attentions.1"]
    with pytest.raises(ValueError, match="up_blocks.2.attentions.0"):
        method.layers(available, SeediffConfig(seed_factor=2, expansion_factors=(2,), seed_layers=("mid",)))
    with pytest.raises(ValueError, match="seed_layers"):
        SeediffConfig(seed_layers=("sideways",))


def test_label_per_object_leaves_an_absent_label_that_claimed_half_an_object_empty():
    maps, truth = _hand_built_maps(labels=("disk", "box", "absent"), regions=(1, 2, 1))
    # The absent word looks at the disk too, one cell to the right of where "disk" looks.
    maps.cross[4][:, 2] = torch.roll(maps.cross[4][:, 0], shifts=1, dims=-1)
    plain = get_method("seediff").segment(maps, SeediffConfig(label_per_object=False))
    per_object = get_method("seediff").segment(maps, SeediffConfig(label_per_object=True))
    assert (plain.masks[2].numpy() & (truth == 1)).sum() > 100  # per pixel, it takes the disk's right edge
    assert not per_object.masks[2].any()
    assert _iou(per_object.masks[0].numpy(), truth == 1) >= 0.99 and _iou(per_object.masks[1].numpy(), truth == 2) >= 0.95
