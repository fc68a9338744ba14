"""DiffSeg (Tian et al., CVPR 2024): unsupervised segments by merging self-attention maps; labels by
a cross-attention vote.

Steps (official code, google/diffseg ``segmentor.py``; factors relative to the latent grid):

1. Aggregate: per factor, the self-attention of all its layers averaged (head means already); each
   query's key map bilinearly upsampled to the latent grid and renormalised to sum 1; queries
   repeated (nearest) to the latent grid; factors weighted by their grid size (64:32:16:8 on SD1.5
   -> 0.533, 0.267, 0.133, 0.067). -> one attention map per latent pixel.
2. Anchors on an M x M grid (M = 16, spacing (n-1)//(M-1), centred: 1, 5, ..., 61 on 64).
3. Iteration 0: each anchor becomes the mean of all maps within symmetric KL < tau_0 of it.
   Iterations 1..: proposals scanned in order; each unmarked one is replaced by the mean of all
   proposals within tau_i (marked ones included, so groups may overlap) and those are marked.
   tau = (0.9, 0.9, 0.9) as the official demo (the COCO-Stuff benchmark used 1.1).
4. Optional K-means (K = number of proposals, initialised at them) over all maps.
5. Proposals upsampled bilinearly to the image; each pixel takes the argmax -> segments.

KL is computed with an epsilon (1e-5, as iSeg's reimplementation) so float16 maps cannot give
log 0 = NaN. The official code feeds the *clean* latent with t=300's embedding: those are this
method's default settings.

Labels (our addition to the paper's unsupervised output): each label's cross-attention, layers and
factors averaged on the latent grid, L2-normalised over the image; a segment takes the label whose
mean map inside it is highest relative to that label's image mean, if that ratio is at least
``diffseg_vote_threshold``; otherwise it stays unlabelled (background).

Score per label: contrast of the label's cross-attention between its mask and the rest (as the baseline).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from ..attention import CROSS, SELF, Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps
from ..refine import contrast_score, minmax, upsample
from .base import MethodOutput

KL_EPSILON = 1e-5


class DiffSeg:
    name: ClassVar[str] = "diffseg"
    defaults: ClassVar[dict] = {"noise_mode": "clean", "timestep": 300}

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        # Every self-attention layer (the aggregation averages them) and every cross layer (the vote).
        return {layer.name for layer in available if layer.kind in (SELF, CROSS)}

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        segments = segment_map(maps, config)  # (S, H, W) one-hot over segments
        size = tuple(segments.shape[-2:])
        valid = maps.valid(size)
        votes = label_votes(maps, size)  # (K, H, W) ratios to each label's image mean
        masks = assign_labels(segments, votes, valid, config.diffseg_vote_threshold)
        soft = minmax(votes, valid=valid) * valid
        return MethodOutput(soft=soft, masks=masks, score=lambda m: contrast_score(soft, m, valid))


def segment_map(maps: AttentionMaps, config: SeediffConfig) -> torch.Tensor:
    """Steps 1-5: (S, H, W) bool one-hot segments on the working image."""
    aggregated = aggregate(maps)
    anchors = anchor_indices(maps.latent_size, config.diffseg_anchors).to(maps.device)
    proposals = merge(aggregated, anchors, config.diffseg_kl_thresholds)
    if config.diffseg_kmeans:
        proposals = kmeans(aggregated, proposals)
    h, w = maps.latent_size
    size = tuple(maps.image.shape[-2:])
    upsampled = upsample(proposals.reshape(-1, h, w), size, mode="bilinear")
    winner = upsampled.argmax(dim=0)
    return winner[None] == torch.arange(upsampled.shape[0], device=winner.device)[:, None, None]


def aggregate(maps: AttentionMaps) -> torch.Tensor:
    """Step 1: (N, N) attention maps, one row per latent pixel (N = h * w), rows summing to 1."""
    h, w = maps.latent_size
    factors = sorted(maps.self_attention)
    if not factors:
        raise ValueError("DiffSeg needs self-attention; none was captured")
    weights = [1.0 / f for f in factors]
    weights = [weight / sum(weights) for weight in weights]  # proportional to grid size
    total = torch.zeros(h * w, h * w, device=maps.device)
    for factor, weight in zip(factors, weights):
        gh, gw = maps.grid(factor)
        attention = maps.self_attention[factor].float().mean(dim=0)  # (gh*gw, gh*gw)
        keys = F.interpolate(attention.reshape(-1, 1, gh, gw), size=(h, w), mode="bilinear", align_corners=False)
        keys = keys.reshape(gh, gw, h * w).clamp_min(0)
        keys = keys / keys.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        # Repeat each query's map over the latent pixels it covers (nearest).
        keys = keys.repeat_interleave(h // gh, dim=0).repeat_interleave(w // gw, dim=1)
        total += weight * keys.reshape(h * w, h * w)
    return total


def anchor_indices(size: tuple[int, int], anchors: int) -> torch.Tensor:
    """Flat indices of an ``anchors`` x ``anchors`` grid on an (h, w) map, spaced and centred as
    the official code (1, 5, ..., 61 on 64 for 16 anchors)."""
    def axis(n: int) -> torch.Tensor:
        m = min(anchors, n)
        spacing = max(1, (n - 1) // max(m - 1, 1))
        offset = (n - 1 - spacing * (m - 1)) // 2
        return offset + spacing * torch.arange(m)

    ys, xs = axis(size[0]), axis(size[1])
    return (ys[:, None] * size[1] + xs[None, :]).flatten()


def symmetric_kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, N) x (Q, N) distributions -> (P, Q): 0.5 KL(a||b) + 0.5 KL(b||a), with an epsilon."""
    a, b = a.float() + KL_EPSILON, b.float() + KL_EPSILON
    log_a, log_b = a.log(), b.log()
    self_a = (a * log_a).sum(dim=1, keepdim=True)
    self_b = (b * log_b).sum(dim=1, keepdim=True).T
    return 0.5 * (self_a + self_b - a @ log_b.T - log_a @ b.T)


def merge(aggregated: torch.Tensor, anchors: torch.Tensor, thresholds: tuple[float, ...]) -> torch.Tensor:
    """Steps 2-3: (P, N) merged proposals."""
    if aggregated.shape[0] == 0:
        return aggregated
    distance = symmetric_kl(aggregated[anchors], aggregated)  # (A, N)
    close = distance < thresholds[0]
    close[torch.arange(len(anchors), device=close.device), anchors] = True  # an anchor always includes itself
    proposals = (close.float() @ aggregated) / close.sum(dim=1, keepdim=True)
    for tau in thresholds[1:]:
        distance = symmetric_kl(proposals, proposals)
        marked = torch.zeros(len(proposals), dtype=torch.bool, device=proposals.device)
        merged = []
        for i in range(len(proposals)):
            if marked[i]:
                continue
            group = distance[i] < tau
            group[i] = True
            merged.append(proposals[group].mean(dim=0))
            marked |= group
        proposals = torch.stack(merged)
    return proposals


def kmeans(aggregated: torch.Tensor, proposals: torch.Tensor, iterations: int = 10) -> torch.Tensor:
    """Step 4: Lloyd's K-means over the maps, initialised at the proposals (n_init 1)."""
    centres = proposals.clone()
    for _ in range(iterations):
        nearest = torch.cdist(aggregated, centres).argmin(dim=1)
        for k in range(len(centres)):
            members = nearest == k
            if members.any():
                centres[k] = aggregated[members].mean(dim=0)
    return centres


def label_votes(maps: AttentionMaps, size: tuple[int, int]) -> torch.Tensor:
    """(K, H, W): each label's cross-attention (all layers and factors on the latent grid), L2-
    normalised over the image, as a ratio to its mean over the image (1 = an average pixel)."""
    latent = maps.latent_size
    valid = maps.valid(latent)
    stacks = [upsample(maps.cross[f].mean(dim=0), latent) for f in sorted(maps.cross)]
    if not stacks:
        raise ValueError("DiffSeg's label vote needs cross-attention; none was captured")
    summed = torch.stack(stacks).sum(dim=0).clamp_min(0) * valid  # (K, h, w)
    norm = summed.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None]
    summed = summed / norm
    ratio = summed / (summed.sum(dim=(1, 2), keepdim=True) / valid.sum()).clamp_min(1e-12)
    return upsample(ratio, size, mode="bilinear")


def assign_labels(segments: torch.Tensor, votes: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """(S, H, W) segments, (K, H, W) vote ratios -> (K, H, W) disjoint label masks."""
    masks = torch.zeros(votes.shape, dtype=torch.bool, device=votes.device)
    for segment in segments:
        inside = segment & valid
        if not inside.any() or votes.shape[0] == 0:
            continue
        mean = votes[:, inside].mean(dim=1)
        best = int(mean.argmax())
        if float(mean[best]) >= threshold:
            masks[best] |= inside
    return masks

