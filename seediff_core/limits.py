"""What a run may cost: a range for every setting, and a bound on the work and memory of one image.

Settings arrive from anyone who can reach a backend (``/setup``'s extra params, ``/predict``), so
every setting that scales cost has a documented range (``RANGES``, ``LIST_LIMITS``), checked when
a ``SeediffConfig`` is built; the ranges admit each method's reference procedure on a GPU (the
SeeDiff demo's 5000 PAMR iterations, T2M's 10 noise draws at a 1024 px long side, ADE20K's 150
labels). Settings that are each within range can still add up (10 draws x 8 prompt passes x 1024
px), so before any UNet call the pipeline estimates the image's whole cost (``estimate_cost``) and
refuses it (``CostLimitError``) above ``SEEDIFF_MAX_IMAGE_COST`` or ``SEEDIFF_MAX_ATTENTION_GIB``.

Cost unit: one Stable Diffusion 1.5 UNet forward at 512 px (a 64x64 latent), about 20 ms on an
H100 in float16; other grids count in proportion to their latent pixels. Refinement is converted
at ``PAMR_UPDATES_PER_UNIT`` element updates per unit, where its run time on a GPU and on a CPU
matches a forward's (both are memory-bound there).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# field -> (lowest, highest) allowed, both inclusive. None for a bound means unbounded on that side.
RANGES: dict[str, tuple[float | None, float | None]] = {
    "working_size": (64, 1024),  # T2M's reference long side is 704-1024
    "timestep": (0, 999),
    "inversion_steps": (1, 100),  # the reference is 10; 50 is the most any inversion paper uses
    "noise_seed": (0, 2**31 - 1),
    "noise_draws": (1, 32),  # T2M's VOC procedure: 10
    "seed_factor": (1, 64),
    "diffumask_affinity_factor": (1, 64),
    "variance_floor": (0.0, 1.0),
    "flat_layer_weight": (0.0, 1.0),
    "seed_competition_ratio": (0.0, 100.0),
    "expansion_threshold": (0.0, 1.0),
    "pamr_iterations": (0, 10000),  # the SeeDiff demo's 5000 at dilation 1
    "pamr_std_factor": (1e-3, 10.0),
    "final_threshold": (0.0, 1.0),
    "object_colour_tolerance": (0.0, 2.0),
    "object_min_attention": (0.0, 1.0),
    "diffseg_anchors": (2, 64),  # the paper's 16 per side
    "diffseg_vote_threshold": (0.0, 100.0),
    "diffumask_beta": (0.0, 64.0),
    "diffumask_walk_log_steps": (0, 12),  # PSA's 8
    "t2m_tau": (0.0, 1.0),
    "t2m_box_threshold": (0.0, 1.0),
    "min_region_area": (0.0, 0.999),
    "min_region_width": (0.0, 0.999),
    "polygon_tolerance": (0.0, 0.999),
    "attention_chunk": (16, 16384),  # transient memory: batch x heads x chunk x keys x 4 bytes
    "latent_cache_size": (0, 4096),
    "batch_size": (1, 64),
}
# Per-item bounds of list settings, and their longest length.
ITEM_RANGES: dict[str, tuple[float, float]] = {"pamr_dilations": (1, 64), "diffseg_kl_thresholds": (0.0, 100.0)}
LIST_LIMITS: dict[str, int] = {"pamr_dilations": 8, "expansion_factors": 8, "seed_layers": 64,
                               "diffseg_kl_thresholds": 8, "t2m_background_words": 64}
MAX_LABELS = 256  # ADE20K has 150 classes
MAX_WORDS_PER_LABEL = 8  # the label's own words plus its synonyms

# Refinement element updates that cost about one unit (see the module docstring).
PAMR_UPDATES_PER_UNIT = 4e9
PAMR_METHODS = ("seediff", "diffumask", "t2m")
REFERENCE_LATENT_PIXELS = 64 * 64
# Units per image, ~10 s on an H100: admits every method's reference procedure on a 640x480 photo,
# with ADE20K's 150 labels: the SeeDiff demo's PAMR at 512 px 313, T2M's 10 draws at 1024 px 466,
# the defaults 10-30 (benchmarks/README.md); 100 inversion steps at 1024 px cost 312.
DEFAULT_MAX_IMAGE_COST = 500.0
DEFAULT_MAX_ATTENTION_GIB = 16.0
COST_ENV, MEMORY_ENV = "SEEDIFF_MAX_IMAGE_COST", "SEEDIFF_MAX_ATTENTION_GIB"


class CostLimitError(ValueError):
    """A setting, or the settings together, would cost more than the limits allow."""


def check_ranges(values: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first setting outside its range, the range and the fix."""
    for name, (low, high) in RANGES.items():
        value = values.get(name)
        if value is None or isinstance(value, bool):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            raise ValueError(f"{name}={value} is outside its range {_span(low, high)}; set it within the range "
                             "(README, 'Limits')")
    for name, longest in LIST_LIMITS.items():
        items = values.get(name) or ()
        if len(items) > longest:
            raise ValueError(f"{name} has {len(items)} values; at most {longest} are allowed")
        if name in ITEM_RANGES:
            low, high = ITEM_RANGES[name]
            bad = [v for v in items if not low <= v <= high]
            if bad:
                raise ValueError(f"{name} values {bad} are outside {_span(low, high)}")


def check_labels(labels: Sequence[str], synonyms: Mapping[str, Sequence[str]] | None = None,
                 words: Mapping[str, Sequence[str]] | None = None) -> None:
    """Raise ValueError when there are more labels than ``MAX_LABELS`` or a label has more words
    (its own, ``words``, ``synonyms``) than ``MAX_WORDS_PER_LABEL``."""
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels; at most {MAX_LABELS} can be asked at once (split the label set)")
    for label in labels:
        count = len((words or {}).get(label) or [label]) + len((synonyms or {}).get(label, ()))
        if count > MAX_WORDS_PER_LABEL:
            raise ValueError(f"label {label!r} has {count} prompt words with its synonyms; at most "
                             f"{MAX_WORDS_PER_LABEL} are allowed")


@dataclass(frozen=True)
class Cost:
    """The predicted work of one image.

    Attributes:
        unet_forwards (`int`): UNet calls (inversion steps, then prompt passes x noise draws).
        latent_pixels (`int`): h * w of the latent grid.
        refine_updates (`float`): element updates of PAMR and of DiffuMask's random walk.
        attention_bytes (`int`): the captured attention kept in memory, plus the method's largest
            matrices over it (DiffSeg's aggregated N x N).
    """

    unet_forwards: int
    latent_pixels: int
    refine_updates: float
    attention_bytes: int

    @property
    def units(self) -> float:
        """Cost in SD 1.5 512 px UNet forwards."""
        return (self.unet_forwards * self.latent_pixels / REFERENCE_LATENT_PIXELS
                + self.refine_updates / PAMR_UPDATES_PER_UNIT)

    def describe(self) -> str:
        return (f"{self.unet_forwards} UNet forwards on a {self.latent_pixels}-pixel latent, "
                f"{self.refine_updates:.3g} refinement updates: {self.units:.1f} units (one unit = one SD 1.5 "
                f"forward at 512 px); {self.attention_bytes / 2**30:.2f} GiB of attention")


def estimate_cost(config, latent_size: tuple[int, int], image_size: tuple[int, int], labels: int, passes: int,
                  layers, wanted: set[str], batch: int = 1) -> Cost:
    """The cost of one image with ``config``.

    Args:
        config (`SeediffConfig`): the run's settings.
        latent_size (`tuple[int, int]`): (h, w) of the latent grid.
        image_size (`tuple[int, int]`): (H, W) of the working image (refinement runs there).
        labels (`int`): labels asked, the method's extra words included.
        passes (`int`): prompt passes (labels that overflow one text window take several).
        layers (`list[Layer]`): the UNet's attention layers; ``wanted`` names the captured ones.
        batch (`int`): images captured together (the stores hold every row).
    """
    h, w = latent_size
    n = h * w
    inversion = config.inversion_steps if config.noise_mode == "invert" else 0
    draws = config.noise_draws if config.noise_mode == "noise" else 1
    forwards = inversion + passes * draws
    pixels = image_size[0] * image_size[1]
    neighbours = 8 * len(config.pamr_dilations)
    refine = 0.0
    if config.method in PAMR_METHODS:  # DiffSeg and the raw baseline do not refine
        refine = float(config.pamr_iterations * neighbours * (labels + 1) * pixels)
    if config.method == "diffumask":
        grid = n // config.diffumask_affinity_factor**2
        refine += 2**config.diffumask_walk_log_steps * labels * grid**2
    memory = 0
    for layer in layers:
        if layer.name not in wanted:
            continue
        queries = n // layer.factor**2
        keys = queries if layer.kind == "self" else 77
        memory += batch * queries * keys * 4 * (1 if layer.kind == "self" else passes)
    if config.method == "diffseg":
        memory += 3 * n * n * 4  # the aggregated maps and their per-factor intermediates, fp32
    return Cost(forwards, n, refine, memory)


def max_image_cost() -> float:
    return _env_float(COST_ENV, DEFAULT_MAX_IMAGE_COST)


def max_attention_gib() -> float:
    return _env_float(MEMORY_ENV, DEFAULT_MAX_ATTENTION_GIB)


def check_cost(cost: Cost) -> None:
    """Raise CostLimitError when ``cost`` exceeds the image limits, naming what to lower."""
    if cost.units > max_image_cost():
        raise CostLimitError(
            f"this image would cost {cost.describe()}, over the limit of {max_image_cost():g} units per image; "
            "lower inversion_steps, noise_draws, pamr_iterations, working_size or the number of labels, or raise "
            f"{COST_ENV} (an administrator's setting) if you mean it")
    if cost.attention_bytes > max_attention_gib() * 2**30:
        raise CostLimitError(
            f"this image would keep {cost.attention_bytes / 2**30:.1f} GiB of attention, over the limit of "
            f"{max_attention_gib():g} GiB; lower working_size or batch_size, or raise {MEMORY_ENV}")


def _span(low, high) -> str:
    return f"{'-inf' if low is None else low}..{'inf' if high is None else high}"


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={raw!r} must be a positive number")
    return value
