"""T2M, "From Text to Mask" (Xiao et al., Neurocomputing 2024): cross-attention refined by squared
self-attention inside class-aware boxes.

Steps (Big-Brother-Pikachu/Text2Mask ``scripts/SD_seg.py``, VOC settings; SD1.5 names in brackets):

1. Prompt "a photo including {labels}" with background words appended (CLIMS's list: tree, river,
   sea, ...), which soak up the background's attention; one-step noising at t = 150; averaging over
   ``noise_draws`` draws (10 on VOC, 1 on COCO).
2. Cross-attention of the 16x16 encoder blocks, the mid block and the first two 16x16 decoder blocks
   (LDM blocks 4-8) [down_blocks.2, mid_block, up_blocks.1.attentions.0/1]: each label's map
   bilinearly resized to the self-attention grid, averaged over those layers, min-max per label.
3. Self-attention of the second 32x32 decoder block (LDM block 11) [up_blocks.2.attentions.1],
   squared (A @ A, a two-step walk).
4. Class-aware refinement (CLIP-ES's CAA): bounding boxes around every part of the label's map above
   ``t2m_box_threshold`` x its max; self-attention columns outside the boxes zeroed; refined map =
   masked A^2 @ map; min-max.
5. Background score (2 tau - max over labels)^2 with tau = ``t2m_tau``; each pixel to the argmax,
   after PAMR on the image in place of the paper's dense CRF (no CRF dependency).

Deviations: the attention (not the refined maps) is averaged over noise draws, which is one matrix
product instead of one per draw; the score maps are upsampled bilinearly before the argmax (the
paper takes the argmax and resizes it nearest); PAMR instead of the dense CRF.

Score: contrast of the refined map between the mask and the rest of the image.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch

from ..attention import CROSS, SELF, Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps
from ..refine import component_boxes, contrast_score, minmax, pamr, upsample
from .base import MethodOutput

_ATTENTION_INDEX = re.compile(r"\.attentions\.(\d+)\.")
SELF_FACTOR = 2


class T2M:
    name: ClassVar[str] = "t2m"
    defaults: ClassVar[dict] = {"noise_mode": "noise", "timestep": 150, "prompt_template": "a photo including {labels}"}

    def prompt_extras(self, config: SeediffConfig) -> list[str]:
        return list(config.t2m_background_words)

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        return set(cross_layers(available)) | {self_layer(available)}

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        count = len(maps.labels) - len(maps.extras)
        grid = maps.grid(SELF_FACTOR)
        valid_grid = maps.valid(grid)
        cams = class_maps(maps, grid)[:count]  # (K, h, w) in [0, 1]
        attention = maps.require_self(SELF_FACTOR).float().mean(dim=0)
        squared = attention @ attention
        refined = torch.stack([
            refine(squared, cam, box_mask(cam, config.t2m_box_threshold) & valid_grid, valid_grid) for cam in cams
        ]) if count else cams
        size = tuple(maps.image.shape[-2:])
        valid = maps.valid(size)
        scores = minmax(upsample(refined, size, mode="bilinear"), valid=valid) * valid
        background = (2 * config.t2m_tau - scores.amax(dim=0)) ** 2 if count else torch.ones(size, device=maps.device)
        # The paper's dense CRF, done here by PAMR on the image (as for DiffuMask).
        stacked = pamr(maps.image, torch.cat([background[None], scores]), config.pamr_iterations,
                       config.pamr_dilations, config.pamr_std_factor)
        winner = stacked.argmax(dim=0)
        masks = (winner[None] == torch.arange(1, count + 1, device=winner.device)[:, None, None]) & valid
        return MethodOutput(soft=scores, masks=masks, score=lambda m: contrast_score(scores, m, valid))


def cross_layers(available: list[Layer]) -> list[str]:
    """LDM blocks 4-8: the factor-4 encoder layers, the mid block, the first two factor-4 decoder blocks."""
    picked = []
    for layer in available:
        if layer.kind != CROSS:
            continue
        index = int(_ATTENTION_INDEX.search(layer.name).group(1)) if _ATTENTION_INDEX.search(layer.name) else 0
        if layer.block == "mid" or (layer.factor == 4 and (layer.block == "down" or index < 2)):
            picked.append(layer.name)
    if not picked:
        raise ValueError("T2M found no cross-attention at factor 4 or in the mid block")
    return picked


def self_layer(available: list[Layer]) -> str:
    """LDM block 11: the second factor-2 decoder self-attention (the first if there is one)."""
    ups = [l for l in available if l.kind == SELF and l.factor == SELF_FACTOR and l.block == "up"]
    if not ups:
        raise ValueError(f"T2M needs decoder self-attention at factor {SELF_FACTOR}; this model has none")
    return ups[min(1, len(ups) - 1)].name


def class_maps(maps: AttentionMaps, grid: tuple[int, int]) -> torch.Tensor:
    """Step 2: (K + extras, h, w) per-label min-max maps on the self-attention grid."""
    resized = [upsample(maps.cross[f].flatten(0, 1), grid, mode="bilinear").reshape(-1, len(maps.labels), *grid)
               for f in sorted(maps.cross)]
    return minmax(torch.cat(resized).mean(dim=0), valid=maps.valid(grid))


def box_mask(cam: torch.Tensor, threshold: float) -> torch.Tensor:
    """(h, w) bool: the bounding boxes of every part of ``cam`` above ``threshold`` x its max (the
    official code's cv2 contours' boxes; here in torch, on the maps' device)."""
    peak = cam.max()
    return component_boxes((cam >= threshold * peak) & (peak > 0))


def refine(squared: torch.Tensor, cam: torch.Tensor, box: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Step 4: (h, w) refined map = (A^2 with columns outside ``box`` zeroed) @ cam, min-max."""
    columns = box.flatten().float()
    refined = (squared * columns[None, :]) @ cam.flatten()
    return minmax(refined.reshape(cam.shape), valid=valid)
