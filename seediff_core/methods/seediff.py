"""SeeDiff (Park, Jo, Baik 2025): cross-attention seeds grown by multi-scale self-attention.

Steps (reference demo ``seediff_app.py``; factors are relative to the latent grid, so factor 4 is
SD1.5's 16x16 grid and factor 1 its 64x64 one):

1. Seeds. Per cross-attention layer at ``seed_factor`` (those ``seed_layers`` picks): the label's map, min-max normalised; a
   layer whose normalised map has variance <= ``variance_floor`` is damped by ``flat_layer_weight``.
   Sum over layers, min-max -> A. Seeds = pixels where A**2 is at or above its Otsu threshold.
2. Expansion at the first factor: F = minmax(sum over seeds s of cos(S_i, S_s)), S the first
   up-block self-attention at that factor.
3. Each finer factor: prior P = minmax(bicubic(F)); background seeds = pixels where P**2 is below
   its Otsu threshold; B = minmax(sum over background seeds of cos(S_i, S_b));
   F = minmax(P * (1 - B)).
4. Bicubic to the working image, min-max, binarise at ``expansion_threshold``; PAMR on the image;
   min-max; mask = refined >= ``final_threshold``.
5. Several labels: a pixel claimed by several masks goes to the label whose refined value (then
   expanded attention) is highest there; pixels no label claims are background.

``label_per_object`` (ours, on by default): each object (a connected region of the masks' union, split
where colours differ) goes whole to the label with the largest share of the seed layers'
cross-attention over it; see ``refine.label_objects``.

Optional (``seed_competition``, ours): a seed cell must also be one where the label attends more,
relative to its own image-wide mean, than every other label; labels that the prompt names but the
image lacks then get no seeds and no mask, as a Label Studio project's full label list needs.

The finer expansion steps only remove background-like pixels (F <= P), so the mask's extent is
that of the blurred coarse prior until PAMR floods it out to the object's colour edges; that is why
the demo runs PAMR for thousands of iterations.

Deviations from the demo, and why: statistics (min-max, Otsu) ignore the padding added to keep the
aspect ratio; PAMR uses dilations (1, 2, 4, 8, 16, 32) for 30 iterations instead of dilation 1 for
5000 (similar reach, ~100x less work); the demo's per-seed Python loop is the equivalent matrix product.

Score (``seediff_score``): "contrast" of the expanded attention (step 3's F at image size) between
the label's mask and the rest of the image (``refine.contrast_score``); "share", the mask's mean
share of the labels' cross-attention in the seed layers; or their geometric mean. All in [0, 1];
low scores flag masks to review.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..attention import CROSS, SELF, Layer
from ..config import SeediffConfig
from ..hints import box_mask, point_mask
from ..maps import AttentionMaps
from ..refine import (contrast_score, cosine_affinity_sum, label_objects, minmax, otsu_threshold, pamr,
                      resolve_overlaps, upsample)
from .base import MethodOutput


class SeeDiff:
    name: ClassVar[str] = "seediff"

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        names = {layer.name for layer in available if layer.kind == CROSS and layer.factor == config.seed_factor
                 and seed_layer_wanted(layer, config.seed_layers)}
        if not names:
            have = sorted(layer.name.split(".transformer")[0] + f" (factor {layer.factor})"
                          for layer in available if layer.kind == CROSS)
            raise ValueError(f"no cross-attention layer at seed_factor {config.seed_factor} matches seed_layers "
                             f"{list(config.seed_layers)}; the model has {have}")
        for factor in config.expansion_factors:
            names.add(first_self_layer(available, factor))
        return names

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        cross = maps.require_cross(config.seed_factor)
        valid = maps.valid(maps.grid(config.seed_factor))
        seeds_map = seed_maps(cross, valid, config.variance_floor, config.flat_layer_weight)
        owner = seed_owners(cross, valid, config.seed_competition_ratio) if config.seed_competition else None
        expanded = expand(seeds_map, maps, config.expansion_factors, owner)
        return finalize(expanded, cross, maps, config)


def seed_layer_wanted(layer: Layer, wanted: tuple[str, ...]) -> bool:
    """Does ``layer`` match a block kind or a layer-name prefix of ``wanted``?"""
    return any(layer.block == w if w in ("down", "mid", "up") else layer.name.startswith(w) for w in wanted)


def first_self_layer(available: list[Layer], factor: int) -> str:
    """The first up-block self-attention layer at ``factor`` (the demo's choice), else the first at it."""
    candidates = [layer for layer in available if layer.kind == SELF and layer.factor == factor]
    if not candidates:
        have = sorted({layer.factor for layer in available if layer.kind == SELF})
        raise ValueError(f"the model has no self-attention at factor {factor}; it has factors {have}")
    up = [layer for layer in candidates if layer.block == "up"]
    return (up or candidates)[0].name


def seed_maps(cross: torch.Tensor, valid: torch.Tensor, variance_floor: float, flat_weight: float) -> torch.Tensor:
    """Step 1 before Otsu. (layers, K, h, w) cross-attention -> (K, h, w) in [0, 1]."""
    normed = minmax(cross, valid=valid)
    values = normed[..., valid]  # (layers, K, valid pixels)
    flat = (values.var(dim=-1, unbiased=False) <= variance_floor if values.shape[-1] > 1
            else torch.ones(normed.shape[:2], dtype=torch.bool, device=normed.device))
    normed = normed * torch.where(flat, flat_weight, 1.0)[..., None, None]
    return minmax(normed.sum(dim=0), valid=valid)


def label_share(cross: torch.Tensor) -> torch.Tensor:
    """(layers, K, h, w) cross-attention -> (K, h, w): each label's share of the labels' attention per
    cell, summed over layers (which word a place asks for, whatever the words' overall levels)."""
    summed = cross.float().clamp_min(0).sum(dim=0)
    return summed / summed.sum(dim=0, keepdim=True).clamp_min(1e-12)


def seed_owners(cross: torch.Tensor, valid: torch.Tensor, min_ratio: float = 2.0) -> torch.Tensor:
    """(layers, K, h, w) cross-attention -> (K, h, w) bool: the label that attends most to each cell,
    relative to that label's own mean over the image, where that ratio is at least ``min_ratio``.
    A label named in the prompt but absent from the image attends diffusely (ratios near 1
    everywhere), so it owns no cell and gets no seeds."""
    summed = cross.float().clamp_min(0).sum(dim=0)  # (K, h, w)
    mean = (summed * valid).sum(dim=(1, 2), keepdim=True) / valid.sum().clamp_min(1)
    ratio = summed / mean.clamp_min(1e-12)
    best, winner = ratio.max(dim=0)
    labels = torch.arange(summed.shape[0], device=summed.device)[:, None, None]
    return (winner[None] == labels) & (best >= min_ratio)[None] & valid


def otsu_foreground(maps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(K, h, w) in [0, 1] -> (K, h, w) bool: per map, pixels whose square is at or above the Otsu
    threshold of the squared valid pixels."""
    squared = maps.float() ** 2
    out = torch.zeros_like(squared, dtype=torch.bool)
    for k in range(squared.shape[0]):
        out[k] = (squared[k] >= otsu_threshold(squared[k][valid])) & valid
    return out


def expand(seeds_map: torch.Tensor, maps: AttentionMaps, factors: tuple[int, ...],
           owner: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 1-3. (K, h, w) seed map -> (K, h', w') expanded map at the finest factor, in [0, 1].

    Annotator hints (``maps.hints``) change three things for their label: positive clicks replace
    the cross-attention seeds (and keep what resembles them at every scale coarser than the latent
    grid); negative clicks join the background seeds at every scale; boxes
    confine the seeds and the expanded map.
    """
    first = factors[0]
    grid = maps.grid(first)
    valid = maps.valid(grid)
    seeds_map = minmax(upsample(seeds_map, grid), valid=valid)
    seeds = otsu_foreground(seeds_map, valid)
    if owner is not None:  # competition between labels (seed_competition)
        seeds &= upsample(owner.float(), grid, mode="nearest") > 0.5
    allowed, negatives = _hint_masks(maps, grid, valid)
    for k, label in enumerate(maps.labels):
        hint = maps.hints.get(label)
        if hint and hint.positive:
            seeds[k] = point_mask(hint.positive, grid, maps.device) & valid
        elif hint and hint.boxes:
            seeds[k] &= allowed[k]
            if not seeds[k].any():  # no attention seed in the box: take its hottest cell
                seeds[k].view(-1)[torch.where(allowed[k], seeds_map[k], -1.0).argmax()] = True
    attention = maps.require_self(first)[0]
    expanded = minmax(cosine_affinity_sum(attention, seeds.flatten(1)).reshape(-1, *grid), valid=valid)
    if negatives.any():
        push = minmax(cosine_affinity_sum(attention, negatives.flatten(1)).reshape(-1, *grid), valid=valid)
        has = negatives.flatten(1).any(dim=1)[:, None, None]
        expanded = torch.where(has, minmax(expanded * (1 - push), valid=valid), expanded)
    expanded = expanded * allowed
    for factor in factors[1:]:
        grid = maps.grid(factor)
        valid = maps.valid(grid)
        allowed, negatives = _hint_masks(maps, grid, valid)
        prior = minmax(upsample(expanded, grid), valid=valid)
        background = (~otsu_foreground(prior, valid) & valid) | negatives
        attention = maps.require_self(factor)[0]
        similarity = minmax(cosine_affinity_sum(attention, background.flatten(1)).reshape(-1, *grid), valid=valid)
        expanded = minmax(prior * (1 - similarity), valid=valid) * allowed
        clicks = _click_masks(maps, grid, valid)
        # A click is finer than the first grid's cell: at each coarser scale, keep what resembles it.
        # Not on the latent grid itself: rows there follow texture (a stripe, a dot), so one clicked
        # cell resembles only the parts of the object in its own phase (shapes-world v3's 32x32
        # grid: recall of the clicked object 0.59 with it, 0.96 without).
        if clicks.any() and factor > 1:
            toward = minmax(cosine_affinity_sum(attention, clicks.flatten(1)).reshape(-1, *grid), valid=valid)
            clicked = clicks.flatten(1).any(dim=1)[:, None, None]
            expanded = torch.where(clicked, minmax(expanded * toward, valid=valid), expanded)
    return expanded


def _click_masks(maps: AttentionMaps, grid: tuple[int, int], valid: torch.Tensor) -> torch.Tensor:
    """(K, h, w) bool: the cells under each label's positive clicks."""
    clicks = torch.zeros(len(maps.labels), *grid, dtype=torch.bool, device=maps.device)
    for k, label in enumerate(maps.labels):
        hint = maps.hints.get(label)
        if hint and hint.positive:
            clicks[k] = point_mask(hint.positive, grid, maps.device) & valid
    return clicks


def _hint_masks(maps: AttentionMaps, grid: tuple[int, int], valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, h, w) bool each: where a label may be (its boxes, or everywhere valid) and its negative clicks."""
    allowed = valid.expand(len(maps.labels), *grid).clone()
    negatives = torch.zeros_like(allowed)
    for k, label in enumerate(maps.labels):
        hint = maps.hints.get(label)
        if hint:
            allowed[k] &= box_mask(hint.boxes, grid, maps.device)
            negatives[k] = point_mask(hint.negative, grid, maps.device) & valid
    return allowed, negatives


def finalize(expanded: torch.Tensor, cross: torch.Tensor, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
    """Step 4-5 on the working image, then labels per object and the score (``cross``: the seed
    layers' (layers, K, h, w) cross-attention)."""
    size = tuple(maps.image.shape[-2:])
    valid = maps.valid(size)
    evidence = minmax(upsample(expanded, size), valid=valid)
    allowed, _ = _hint_masks(maps, size, valid)
    binary = (evidence >= config.expansion_threshold) & allowed
    refined = pamr(maps.image, binary.float(), config.pamr_iterations, config.pamr_dilations, config.pamr_std_factor)
    refined = minmax(refined, valid=valid) * valid
    masks = (refined >= config.final_threshold) & allowed
    masks = resolve_overlaps(masks, refined + 1e-3 * evidence)
    per_object = config.label_per_object and not maps.hints
    share = upsample(label_share(cross), size, mode="bilinear") if per_object or config.seediff_score != "contrast" else None
    if per_object:
        strength = minmax(upsample(cross.float().clamp_min(0).sum(dim=(0, 1))[None], size, mode="bilinear"),
                          valid=valid)[0]
        masks = label_objects(masks, share, maps.image, config.object_colour_tolerance, strength,
                              config.object_min_attention)
    kind = config.seediff_score
    return MethodOutput(soft=refined, masks=masks, score=lambda m: seediff_scores(evidence, share, m, valid, kind))


def seediff_scores(evidence: torch.Tensor, share: torch.Tensor | None, masks: torch.Tensor, valid: torch.Tensor,
                   kind: str) -> torch.Tensor:
    """(K,) scores of (K, H, W) bool ``masks``: "contrast" of the (K, H, W) expanded attention
    ``evidence``, the masks' mean ``share`` (K, H, W) of the labels' attention, or their geometric
    mean ("contrast*share"); 0 for an empty mask."""
    scores = contrast_score(evidence, masks, valid)
    if kind == "contrast":
        return scores
    inside = (masks & valid).float()
    mean_share = (share * inside).sum(dim=(-2, -1)) / inside.sum(dim=(-2, -1)).clamp_min(1)
    scores = mean_share if kind == "share" else (scores * mean_share).sqrt()
    return torch.where(inside.flatten(1).any(dim=1), scores, torch.zeros_like(scores))
