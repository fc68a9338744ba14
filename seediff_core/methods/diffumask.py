"""DiffuMask-style masks (Wu et al., ICCV 2023): aggregated cross-attention and an adaptive threshold.

Steps (weijiawu/DiffuMask; factors relative to the latent grid):

1. Cross-attention of up and down blocks at factors 4, 2 and 1 (16/32/64 on SD1.5): per factor the
   mean over heads and layers, bicubic to the image, divided by its max; the factors averaged.
   (Over timesteps too when the attention was captured during generation.)
2. Reference mask, standing in for the paper's AffinityNet (which is trained per class, so not
   available here): a random walk on the self-attention at ``diffumask_affinity_factor``. The
   affinity is the symmetrised attention, row-max normalised, raised to ``diffumask_beta``; the
   transition matrix is its column-normalised form; the maps take 2**``diffumask_walk_log_steps``
   steps (PSA's logt = 8). Background score 0.45 as in ``infer_aff.py``; argmax.
3. The paper's threshold search: for each background level gamma in 0.35, 0.36, ..., 0.54 the
   argmax of [gamma, maps] is compared with the reference (mean IoU over labels); the best gamma wins.
4. The mask at that gamma, refined by PAMR on the image instead of the paper's dense CRF (no CRF
   dependency), re-thresholded at gamma; overlaps go to the highest map.

Not reproduced, and why: the LAION prompt retrieval, the per-class AffinityNet and the Mask2Former
noise-learning stages need training or the internet; the class-specific offsets of the thresholds.

Score: contrast of the step-1 map between the mask and the rest of the image.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attention import CROSS, SELF, Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps
from ..refine import contrast_score, minmax, pamr, upsample
from .base import MethodOutput

REFERENCE_BACKGROUND = 0.45
GAMMAS = tuple(round(0.35 + 0.01 * i, 2) for i in range(20))
FACTORS = (4, 2, 1)


class DiffuMask:
    name: ClassVar[str] = "diffumask"

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        cross = {l.name for l in available if l.kind == CROSS and l.block != "mid" and l.factor in FACTORS}
        affinity = {l.name for l in available if l.kind == SELF and l.factor == config.diffumask_affinity_factor}
        if not affinity:
            have = sorted({l.factor for l in available if l.kind == SELF})
            raise ValueError(f"no self-attention at diffumask_affinity_factor={config.diffumask_affinity_factor}; "
                             f"this model has factors {have}")
        return cross | affinity

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        size = tuple(maps.image.shape[-2:])
        valid = maps.valid(size)
        heat = aggregate_cross(maps, size) * valid  # (K, H, W) in [0, 1]
        walked = random_walk(maps, config.diffumask_affinity_factor, config.diffumask_beta,
                             config.diffumask_walk_log_steps, size) * valid
        reference = argmax_with_background(walked, REFERENCE_BACKGROUND) & valid
        gamma = max(GAMMAS, key=lambda g: _agreement(argmax_with_background(heat, g) & valid, reference))
        refined = minmax(pamr(maps.image, heat, config.pamr_iterations, config.pamr_dilations,
                              config.pamr_std_factor), valid=valid) * valid
        masks = argmax_with_background(refined, gamma) & valid
        return MethodOutput(soft=refined, masks=masks, score=lambda m: contrast_score(heat, m, valid))


def aggregate_cross(maps: AttentionMaps, size: tuple[int, int]) -> torch.Tensor:
    """Step 1: (K, H, W) in [0, 1]."""
    per_factor = []
    for factor in FACTORS:
        if factor not in maps.cross:
            continue
        layers = [i for i, name in enumerate(maps.cross_layers[factor]) if ".mid_block." not in f".{name}"]
        mean = maps.cross[factor][layers].mean(dim=0).clamp_min(0)  # (K, h, w)
        up = upsample(mean, size)
        per_factor.append(up / up.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None])
    if not per_factor:
        raise ValueError(f"no cross-attention at factors {FACTORS}; captured {sorted(maps.cross)}")
    return torch.stack(per_factor).mean(dim=0)


def random_walk(maps: AttentionMaps, factor: int, beta: float, log_steps: int, size: tuple[int, int]) -> torch.Tensor:
    """Step 2: the step-1 maps propagated over the self-attention graph, (K, H, W), each max 1."""
    grid = maps.grid(factor)
    attention = maps.require_self(factor).float().mean(dim=0)  # (N, N)
    affinity = (attention + attention.T) / 2
    affinity = (affinity / affinity.amax(dim=1, keepdim=True).clamp_min(1e-12)) ** beta
    transition = affinity / affinity.sum(dim=0, keepdim=True).clamp_min(1e-12)  # column-normalised
    seeds = F.adaptive_avg_pool2d(aggregate_cross(maps, tuple(maps.image.shape[-2:]))[None], grid)[0]
    state = seeds.flatten(1)  # (K, N)
    for _ in range(2**log_steps):
        state = state @ transition  # PSA's cam @ T: each step a weighted average over neighbours
    walked = upsample(state.reshape(-1, *grid), size, mode="bilinear").clamp_min(0)
    return walked / walked.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]


def argmax_with_background(maps: torch.Tensor, background: float) -> torch.Tensor:
    """(K, H, W) -> (K, H, W) bool: each pixel to its highest map, or to none below ``background``."""
    if maps.shape[0] == 0:
        return maps.bool()
    best, index = maps.max(dim=0)
    labels = torch.arange(maps.shape[0], device=maps.device)[:, None, None]
    return (index[None] == labels) & (best[None] > background)


def _agreement(candidate: torch.Tensor, reference: torch.Tensor) -> float:
    inter = (candidate & reference).flatten(1).sum(1).float()
    union = (candidate | reference).flatten(1).sum(1).float()
    return float(torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union)).mean())
