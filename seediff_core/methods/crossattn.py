"""Raw cross-attention, thresholded: the DAAM-style baseline every other method must beat.

Heat map of a label (DAAM, Tang et al. 2023): its token maps from every up- and down-block
cross-attention layer at factors 1, 2 and 4 (DAAM skips the coarsest, 8x8 on SD1.5), each
bicubic-upsampled to the latent grid, averaged; then bicubic to the image and min-max normalised.
Mask: pixels at or above the map's Otsu threshold; a pixel claimed by several labels goes to the
label with the hottest map there.

Score: contrast of the heat map between the mask and the rest of the image (``refine.contrast_score``).
"""

from __future__ import annotations

from typing import ClassVar

import torch

from ..attention import CROSS, Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps
from ..refine import contrast_score, minmax, otsu_threshold, resolve_overlaps, upsample
from .base import MethodOutput

HEATMAP_FACTORS = (1, 2, 4)


def heatmap_layers(available: list[Layer]) -> set[str]:
    """DAAM's layers: cross-attention in up and down blocks at factors 1, 2 and 4."""
    return {l.name for l in available if l.kind == CROSS and l.block != "mid" and l.factor in HEATMAP_FACTORS}


def heat_maps(maps: AttentionMaps) -> torch.Tensor:
    """(K, H, W) float in [0, 1] on the working image: each label's DAAM heat map."""
    latent = maps.latent_size
    stacks = [upsample(maps.cross[f].flatten(0, 1), latent).reshape(-1, len(maps.labels), *latent)
              for f in HEATMAP_FACTORS if f in maps.cross]
    if not stacks:
        raise ValueError(f"no cross-attention at factors {HEATMAP_FACTORS}; captured {sorted(maps.cross)}")
    mean = torch.cat(stacks).clamp_min(0).mean(dim=0)  # (K, h, w)
    size = tuple(maps.image.shape[-2:])
    valid = maps.valid(size)
    return minmax(upsample(mean, size), valid=valid) * valid


class CrossAttentionBaseline:
    name: ClassVar[str] = "crossattn"

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        return heatmap_layers(available)

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        heat = heat_maps(maps)
        valid = maps.valid(tuple(heat.shape[-2:]))
        masks = torch.stack([(h >= otsu_threshold(h[valid])) & valid for h in heat]) if len(heat) else heat.bool()
        masks = resolve_overlaps(masks, heat)
        return MethodOutput(soft=heat, masks=masks, score=lambda m: contrast_score(heat, m, valid))
