"""Post-processing blocks shared by the methods: pure functions over tensors, each safe on empty input.

Maps are float tensors; K indexes labels; (h, w) is a grid aligned with the working image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def minmax(x: torch.Tensor, dims: tuple[int, ...] = (-2, -1), valid: torch.Tensor | None = None) -> torch.Tensor:
    """Rescale ``x`` to [0, 1] over ``dims`` (per map). ``valid`` (broadcastable bool) restricts the
    statistics to some pixels, e.g. the image without its padding. Flat maps become zeros."""
    if x.numel() == 0:
        return x.float()
    x = x.float()
    if valid is None:
        lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    else:
        valid = valid.expand_as(x)
        lo = torch.where(valid, x, torch.inf).amin(dim=dims, keepdim=True)
        hi = torch.where(valid, x, -torch.inf).amax(dim=dims, keepdim=True)
    span = hi - lo
    out = (x - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, out, torch.zeros_like(out)).clamp_(0, 1)


def otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """Otsu's threshold of ``values`` (any shape, values in [0, 1]); 0.5 for empty or flat input."""
    values = values.detach().float().flatten()
    if values.numel() == 0 or values.max() <= values.min():
        return 0.5
    hist = torch.histc(values.clamp(0, 1), bins=bins, min=0.0, max=1.0).double()
    centers = (torch.arange(bins, dtype=torch.float64, device=hist.device) + 0.5) / bins
    weight_low = hist.cumsum(0)
    weight_high = hist.sum() - weight_low
    mass_low = (hist * centers).cumsum(0)
    mean_low = mass_low / weight_low.clamp(min=1e-12)
    mean_high = (mass_low[-1] - mass_low) / weight_high.clamp(min=1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    best = int(torch.argmax(between[:-1]))
    return float((best + 1) / bins)  # pixels at or above this edge are foreground


def cosine_affinity_sum(attention: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """For every query i and every seed set k: sum over seeds s of cos(row i, row s).

    Args:
        attention (`torch.Tensor`): (N, N) self-attention, row i = query i's distribution over keys.
        seeds (`torch.Tensor`): (K, N) bool, the seed queries of each of K sets.

    Returns:
        (K, N) float32. Vectorised: sum_s cos(A_i, A_s) = A^_i . sum_s A^_s with rows L2-normalised.
    """
    rows = F.normalize(attention.float(), dim=-1)
    return (seeds.float() @ rows) @ rows.T


def upsample(maps: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """(K, h, w) -> (K, *size); bicubic overshoot is clipped back into the input's range."""
    if maps.shape[-2:] == tuple(size) or maps.numel() == 0:
        return maps.float()
    if mode in ("nearest", "area"):  # these take no align_corners
        return F.interpolate(maps[None].float(), size=size, mode=mode)[0]
    out = F.interpolate(maps[None].float(), size=size, mode=mode, align_corners=False)[0]
    return out.clamp(float(maps.min()), float(maps.max())) if mode == "bicubic" else out


def pamr(image: torch.Tensor, masks: torch.Tensor, iterations: int = 10, dilations: tuple[int, ...] = (1, 2, 4, 8),
         std_factor: float = 0.2) -> torch.Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth 2020): propagate masks along image affinities.

    Args:
        image (`torch.Tensor`): (3, H, W) float, any range.
        masks (`torch.Tensor`): (K, H, W) float.
        iterations (`int`): propagation steps.
        dilations (`tuple[int]`): neighbourhood rings; each adds the 8 neighbours at that distance.
        std_factor (`float`): affinity temperature relative to the local colour spread (SeeDiff 0.2,
            the original PAMR 0.1).

    Returns:
        (K, H, W) float32 refined masks.
    """
    if masks.numel() == 0 or iterations <= 0:
        return masks.float()
    image = image.float()
    height, width = image.shape[-2:]
    pad = max(dilations)
    offsets = _offsets(dilations)
    neighbours = torch.stack([_shift(F.pad(image[None], (pad,) * 4, mode="replicate")[0], dy, dx, pad, height, width)
                              for dy, dx in offsets], dim=1)  # (3, P, H, W)
    diff = (neighbours - image[:, None]).abs()
    spread = neighbours.std(dim=1, keepdim=True)
    affinity = (-diff / (std_factor * spread + 1e-8)).mean(dim=0).softmax(dim=0)  # (P, H, W)
    del neighbours, diff, spread
    refined = masks.float()
    for _ in range(iterations):
        # Accumulate neighbour by neighbour: a (K, P, H, W) stack would cost P times the memory traffic.
        padded = F.pad(refined[None], (pad,) * 4, mode="replicate")[0]
        step = torch.zeros_like(refined)
        for n, (dy, dx) in enumerate(offsets):
            step.addcmul_(_shift(padded, dy, dx, pad, height, width), affinity[n])
        refined = step
    return refined


def _offsets(dilations: tuple[int, ...]) -> list[tuple[int, int]]:
    """The 8 neighbours at each dilation, as (dy, dx)."""
    return [(dy, dx) for d in dilations for dy in (-d, 0, d) for dx in (-d, 0, d) if (dy, dx) != (0, 0)]


def _shift(padded: torch.Tensor, dy: int, dx: int, pad: int, height: int, width: int) -> torch.Tensor:
    """View of ``padded`` (C, H + 2 pad, W + 2 pad) moved by (dy, dx): out[y, x] = in[y + dy, x + dx]."""
    return padded[:, pad + dy : pad + dy + height, pad + dx : pad + dx + width]


def resolve_overlaps(masks: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Make masks disjoint: a pixel claimed by several labels goes to the one with the highest
    ``strength`` there; unclaimed pixels stay background.

    Args:
        masks (`torch.Tensor`): (K, H, W) bool.
        strength (`torch.Tensor`): (K, H, W) float.

    Returns:
        (K, H, W) bool, at most one True per pixel.
    """
    if masks.numel() == 0:
        return masks.bool()
    claimed = torch.where(masks.bool(), strength.float(), torch.full_like(strength.float(), -torch.inf))
    winner = claimed.argmax(dim=0)
    labels = torch.arange(masks.shape[0], device=masks.device)[:, None, None]
    return masks.bool() & (winner[None] == labels)


def connected_components(mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """8-connected components of ``mask``, on its device (no hand-over to the CPU).

    Label propagation with pointer jumping: every pixel starts with its own index, takes the
    largest label among its neighbours in the mask, then the label of the pixel its label names
    (which is in the same component and at least as large), until nothing changes.

    Args:
        mask (`torch.Tensor`): (H, W) bool.

    Returns:
        ((H, W) int64 labels, 0 for background and 1..n for the components, ordered by their last
        pixel in raster order; n).
    """
    mask = mask.bool()
    height, width = mask.shape
    if height * width >= 2**24:  # labels ride in float32 through max-pooling
        raise ValueError(f"a {height}x{width} mask is too large for connected_components")
    ids = torch.arange(1, height * width + 1, device=mask.device, dtype=torch.float32).reshape(height, width)
    labels = torch.where(mask, ids, torch.zeros_like(ids))
    while True:
        grown = F.max_pool2d(labels[None, None], 3, stride=1, padding=1)[0, 0] * mask
        jumped = grown.flatten()[(grown.flatten().long() - 1).clamp_min(0)].reshape(height, width) * mask
        grown = torch.maximum(grown, jumped)
        if torch.equal(grown, labels):
            break
        labels = grown
    found, inverse = torch.unique(labels, sorted=True, return_inverse=True)
    # With some pixel off, found[0] is the background's 0 and the components are 1..n already.
    background = int(not bool(mask.all()))
    return (inverse + 1 - background).long(), int(found.numel()) - background


def component_boxes(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) bool -> (H, W) bool: the bounding box of every 8-connected component of ``mask``, filled."""
    components, count = connected_components(mask)
    height, width = mask.shape
    if count == 0:
        return torch.zeros_like(mask, dtype=torch.bool)
    rows = torch.arange(height, device=mask.device)[:, None].expand(height, width)
    cols = torch.arange(width, device=mask.device)[None, :].expand(height, width)
    index = components.flatten()

    def reduce(values: torch.Tensor, how: str, start: int) -> torch.Tensor:
        out = torch.full((count + 1,), start, device=mask.device, dtype=torch.long)
        return out.scatter_reduce(0, index, values.flatten(), reduce=how, include_self=True)[1:]

    y0, y1 = reduce(rows, "amin", height), reduce(rows, "amax", -1)
    x0, x1 = reduce(cols, "amin", width), reduce(cols, "amax", -1)
    inside_rows = (rows[None] >= y0[:, None, None]) & (rows[None] <= y1[:, None, None])
    inside_cols = (cols[None] >= x0[:, None, None]) & (cols[None] <= x1[:, None, None])
    return (inside_rows & inside_cols).any(dim=0)


def label_objects(masks: torch.Tensor, evidence: torch.Tensor, image: torch.Tensor,
                  colour_tolerance: float = 0.15, strength: torch.Tensor | None = None,
                  min_strength: float = 0.0) -> torch.Tensor:
    """Labels per object, not per pixel: in each connected region of the masks' union, the parts
    that different labels claim and that look alike (mean colours within ``colour_tolerance``) are
    one object, and the whole object goes to the label with the most evidence over it. Parts of
    different colour stay apart and are judged alone. A label that wins no object loses its mask,
    which is how a label the image lacks ends up empty when it only claimed part of an object.

    Args:
        masks (`torch.Tensor`): (K, H, W) bool, disjoint.
        evidence (`torch.Tensor`): (K, H, W) float, each label's evidence per pixel (e.g. its share of
            the labels' cross-attention).
        image (`torch.Tensor`): (3, H, W) float in [0, 1].
        colour_tolerance (`float`): largest distance between two parts' mean RGB (0-1 scale, Euclidean)
            for them to count as one object.
        strength (`torch.Tensor`, *optional*): (H, W) float in [0, 1], how much the labels' words are
            looked up at each pixel at all; an object whose mean strength is below ``min_strength``
            is no object of any label (background that a label's seeds grew into) and is dropped.

    Returns:
        (K, H, W) bool, disjoint, covering the pixels of ``masks`` less the dropped objects.
    """
    if masks.shape[0] < 2:
        return masks.bool()
    masks = masks.bool()
    components, count = connected_components(masks.any(dim=0))
    pixels = image.float().flatten(1)  # (3, H*W)
    out = torch.zeros_like(masks)
    for index in range(1, count + 1):
        region = components == index
        parts = [(k, masks[k] & region) for k in range(masks.shape[0]) if (masks[k] & region).any()]
        colours = [pixels[:, part.flatten()].mean(dim=1) for _, part in parts]
        groups: list[list[int]] = []  # greedy: a part joins the first group whose first part looks alike
        for i, colour in enumerate(colours):
            for group in groups:
                if float((colours[group[0]] - colour).norm()) <= colour_tolerance:
                    group.append(i)
                    break
            else:
                groups.append([i])
        for group in groups:
            area = torch.stack([parts[i][1] for i in group]).any(dim=0)
            if strength is not None and float(strength[area].mean()) < min_strength:
                continue
            winner = int(evidence[:, area].mean(dim=1).argmax())
            out[winner] |= area
    return out


def contrast_score(evidence: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Per label: mean evidence inside its mask minus mean evidence outside, clipped to [0, 1].

    1 means the evidence is all inside the mask and none outside; near 0, the mask is no better
    than the rest of the image. Empty (or full) masks score 0.

    Args:
        evidence (`torch.Tensor`): (K, H, W) float in [0, 1].
        masks (`torch.Tensor`): (K, H, W) bool.
        valid (`torch.Tensor`, *optional*): (H, W) bool, pixels that count (the image without padding).

    Returns:
        (K,) float32.
    """
    if masks.numel() == 0:
        return torch.zeros(masks.shape[0], device=masks.device)
    valid = torch.ones(masks.shape[-2:], dtype=torch.bool, device=masks.device) if valid is None else valid
    inside = masks.bool() & valid
    outside = ~masks.bool() & valid
    n_in, n_out = inside.sum(dim=(-2, -1)), outside.sum(dim=(-2, -1))
    mean_in = (evidence * inside).sum(dim=(-2, -1)) / n_in.clamp(min=1)
    mean_out = (evidence * outside).sum(dim=(-2, -1)) / n_out.clamp(min=1)
    score = (mean_in - mean_out).clamp(0, 1)
    return torch.where((n_in > 0) & (n_out > 0), score, torch.zeros_like(score)).float()
