"""Every setting of the pipeline in one frozen dataclass.

Precedence when building one (``make_config``): library defaults < the method's own defaults < the
model folder's ``seediff.json`` (settings tuned for that model, per method) < the caller's values.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Mapping
from typing import Any

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
NOISE_MODES = ("invert", "noise", "clean")


@dataclass(frozen=True)
class SeediffConfig:
    """Settings of one segmentation run.

    Attention-map sizes are given as *factors* of the latent grid (factor 1 = the latent itself,
    64x64 for SD1.5 at 512; factor 4 = 16x16), so the same settings transfer to models and image
    shapes of other sizes.
    """

    # Model and device
    model: str = DEFAULT_MODEL
    device: str | None = None  # None: cuda > mps > cpu
    dtype: str | None = None  # None: float16 on cuda, float32 elsewhere

    # Image: long side of the working grid in pixels; None = the model's native size (512 for SD1.5).
    # The short side keeps the aspect ratio and is padded to the model's multiple (64 for SD).
    working_size: int | None = None

    # Noise level: "invert" (DDIM inversion with an empty prompt), "noise" (one-step noising with
    # noise_seed) or "clean" (the clean latent with timestep t's embedding, as DiffSeg does).
    noise_mode: str = "invert"
    timestep: int = 200
    inversion_steps: int = 10
    noise_seed: int = 0
    noise_draws: int = 1  # "noise" mode: average the attention over this many draws (T2M uses 10 on VOC)

    # Prompt: "{labels}" becomes "a cat, a dog and a bird". Synonyms add prompt words whose maps
    # are averaged into their label's map.
    prompt_template: str = "a photo of {labels}"
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)

    method: str = "seediff"

    # SeeDiff (defaults from the reference demo, seediff_app.py, except where noted)
    seed_factor: int = 4  # cross-attention grid of the seeds (16x16 on SD1.5 at 512)
    # Cross-attention layers (at seed_factor) the seeds read: block kinds ("down", "mid", "up") or
    # layer-name prefixes ("up_blocks.2.attentions.1"). A model whose words bind in some layers only
    # (measure with benchmarks/binding.py) seeds better from those.
    seed_layers: tuple[str, ...] = ("down", "mid", "up")
    variance_floor: float = 1e-4  # a layer whose normalised map varies less than this ...
    flat_layer_weight: float = 0.01  # ... is damped by this weight
    expansion_factors: tuple[int, ...] = (4, 2, 1)  # self-attention grids, coarse to fine
    seed_competition: bool = False  # seeds only where the label out-attends the others (absent labels)
    seed_competition_ratio: float = 2.0  # ... and attends at least this many times its image mean
    expansion_threshold: float = 0.3  # binarises the upsampled expansion before PAMR
    # PAMR: the demo runs 5000 iterations at dilation 1, a random walk that floods each colour
    # region about sqrt(5000) ~ 70 px; dilated neighbourhoods reach as far in 30 iterations, ~100x
    # less work. Flooding matters: the expansion alone stops at its blurred coarse prior.
    pamr_iterations: int = 30
    pamr_dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    pamr_std_factor: float = 0.2
    final_threshold: float = 0.8
    # Labels per object (ours): each object found (a connected region, split where colours differ by
    # more than object_colour_tolerance) goes whole to the label whose share of the seed layers'
    # cross-attention is largest over it, so one object never carries two labels and a label the
    # image lacks keeps no mask unless it wins an object. On by default: on held-out shapes-world
    # scenes it takes objects split between labels from 62 % to none (benchmarks/README.md).
    label_per_object: bool = True
    object_colour_tolerance: float = 0.15
    # ... and an object over which the labels' words are looked up less than this (their summed
    # attention over it, relative to the image's maximum) is background and dropped (0 = keep all).
    object_min_attention: float = 0.0
    # Region score: "contrast" (expanded attention inside vs outside the mask), "share" (the mask's
    # mean share of the labels' cross-attention: how surely its pixels ask for this word rather than
    # another) or "contrast*share". benchmarks/calibration.py measures which predicts IoU best.
    seediff_score: str = "contrast"

    # DiffSeg (official code's defaults; the COCO-Stuff benchmark used thresholds of 1.1)
    diffseg_anchors: int = 16  # anchors per side
    diffseg_kl_thresholds: tuple[float, ...] = (0.9, 0.9, 0.9)  # one per merging iteration
    diffseg_kmeans: bool = False
    diffseg_vote_threshold: float = 1.0  # a segment's label needs this ratio to the label's mean

    # DiffuMask-style (PSA's random walk on self-attention instead of a trained AffinityNet)
    diffumask_affinity_factor: int = 2  # self-attention grid of the walk (32x32 on SD1.5)
    diffumask_beta: float = 16.0  # affinity sharpening (PSA/DiffuMask beta)
    diffumask_walk_log_steps: int = 8  # 2**8 steps (PSA's logt)

    # T2M (Text2Mask's VOC defaults; COCO used tau 0.35 and box threshold 0.5)
    t2m_background_words: tuple[str, ...] = ("tree", "river", "sea", "lake", "water", "railway", "railroad",
                                             "track", "stone", "rocks")
    t2m_tau: float = 0.5  # background score (2 tau - max)^2
    t2m_box_threshold: float = 0.2  # class-aware boxes around parts above this fraction of the max

    # Regions, every method (regions.py): each label's mask is split into its objects. Parts smaller
    # than min_region_area (a fraction of the image) are dropped and holes that small filled; parts
    # nowhere wider than min_region_width (a fraction of the image's long side) are slivers, e.g. a
    # strip along another object's edge, and dropped. Polygons stay within polygon_tolerance of the
    # object's smooth outline, relative to the object's size (the square root of its area).
    min_region_area: float = 0.001
    min_region_width: float = 0.02
    polygon_tolerance: float = 0.015

    # Capture: queries per chunk when materialising attention probabilities.
    attention_chunk: int = 1024
    # Inversion results kept in memory (image hash + settings -> latent).
    latent_cache_size: int = 32
    # segment_batch: images per UNet call (a GPU gains up to its memory; a CPU hardly gains).
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_types(self)
        # JSON and CLI give lists and plain strings; keep the frozen config hashable-friendly.
        object.__setattr__(self, "expansion_factors", tuple(int(v) for v in self.expansion_factors))
        object.__setattr__(self, "pamr_dilations", tuple(int(v) for v in self.pamr_dilations))
        layers = self.seed_layers
        object.__setattr__(self, "seed_layers", (layers,) if isinstance(layers, str) else tuple(str(b) for b in layers))
        object.__setattr__(self, "diffseg_kl_thresholds", tuple(float(v) for v in self.diffseg_kl_thresholds))
        words = self.t2m_background_words
        object.__setattr__(self, "t2m_background_words", (words,) if isinstance(words, str) else tuple(words))
        object.__setattr__(
            self, "synonyms", {str(k): (v,) if isinstance(v, str) else tuple(v) for k, v in self.synonyms.items()}
        )
        _validate(self)

    def replace(self, **changes: Any) -> "SeediffConfig":
        """A copy with ``changes``; unknown names raise ValueError listing the valid ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            valid = ", ".join(f.name for f in dataclasses.fields(self))
            raise ValueError(f"unknown setting(s) {unknown}; valid settings: {valid}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["synonyms"] = {k: list(v) for k, v in self.synonyms.items()}
        return out


def parse_assignments(items) -> dict[str, Any]:
    """["timestep=300", "seed_layers=[\"up\"]", "method=t2m"] -> {"timestep": 300, ...}: each value
    read as JSON, else kept as the string (the command lines' --set).

    Raises:
        ValueError: an item without "=".
    """
    out: dict[str, Any] = {}
    for item in items:
        name, sep, value = str(item).partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{item!r} is not NAME=VALUE, e.g. timestep=300")
        try:
            out[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[name.strip()] = value
    return out


def make_config(
    model: str | None = None,
    model_dir: str | Path | None = None,
    method_defaults: Mapping[str, Mapping[str, Any]] | None = None,
    **overrides: Any,
) -> SeediffConfig:
    """Settings in layers, each over the one before (None values in ``overrides`` are skipped):

    1. the library defaults (SeeDiff's reference values);
    2. ``method_defaults[method]``: the method's own paper settings (e.g. DiffSeg's clean latent at t=300);
    3. ``model_dir/seediff.json``: its top-level settings, then its section for the method
       (``{"timestep": 150, "diffseg": {"timestep": 300}}``), tuned for that model;
    4. ``overrides``, the caller's.
    """
    tuned: dict[str, Any] = {}
    if model_dir is not None and (Path(model_dir) / "seediff.json").is_file():
        tuned = json.loads((Path(model_dir) / "seediff.json").read_text())
    fields = {f.name for f in dataclasses.fields(SeediffConfig)}
    common = {k: v for k, v in tuned.items() if k in fields}
    given = {k: v for k, v in overrides.items() if v is not None}
    method = given.get("method") or common.get("method") or SeediffConfig.method
    section = tuned.get(method, {}) if isinstance(tuned.get(method), dict) else {}
    layers = {**(method_defaults or {}).get(method, {}), **common, **section, **given}
    return (SeediffConfig() if model is None else SeediffConfig(model=model)).replace(**layers)


_SCALARS = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _check_types(config: SeediffConfig) -> None:
    """Every value of the type its field declares (JSON ints pass for floats, lists for tuples), so a
    setting such as {"timestep": "abc"} fails here by name instead of deep inside a method."""
    for f in dataclasses.fields(config):
        value, kind = getattr(config, f.name), str(f.type)
        if value is None and kind.endswith("| None"):
            continue
        kind = kind.removesuffix(" | None")
        if kind in _SCALARS:
            ok = isinstance(value, _SCALARS[kind]) and (kind == "bool" or not isinstance(value, bool))
            expected = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[kind]
        elif kind.startswith("tuple["):
            item = _SCALARS[kind[6:].split(",")[0]]
            items = [value] if isinstance(value, str) and item == (str,) else value
            ok = isinstance(items, (list, tuple)) and all(isinstance(v, item) and not isinstance(v, bool) for v in items)
            expected = f"a list of {kind[6:].split(',')[0]}s"
        elif kind.startswith("dict["):
            ok = isinstance(value, dict) and all(
                isinstance(k, str) and (isinstance(v, str) or isinstance(v, (list, tuple)) and all(isinstance(w, str) for w in v))
                for k, v in value.items())
            expected = 'an object of word lists, e.g. {"cat": ["kitten"]}'
        else:  # a field type this check does not know: a bug here, not in the caller's value
            raise TypeError(f"SeediffConfig.{f.name} has an unchecked type {kind}")
        if not ok:
            raise ValueError(f"{f.name}={value!r} must be {expected}")


def _validate(config: SeediffConfig) -> None:
    from .limits import check_ranges

    if config.noise_mode not in NOISE_MODES:
        raise ValueError(f"noise_mode={config.noise_mode!r}; expected one of {NOISE_MODES}")
    # Every setting that scales cost (or must be a fraction) within its documented range (limits.py).
    check_ranges({f.name: getattr(config, f.name) for f in dataclasses.fields(config)})
    if config.seediff_score not in ("contrast", "share", "contrast*share"):
        raise ValueError(f"seediff_score={config.seediff_score!r}; expected 'contrast', 'share' or 'contrast*share'")
    if "{labels}" not in config.prompt_template:
        raise ValueError(f"prompt_template {config.prompt_template!r} must contain '{{labels}}'")
    factors = (config.seed_factor, *config.expansion_factors)
    if any(f < 1 or f & (f - 1) for f in factors):
        raise ValueError(f"map factors must be powers of two >= 1, got seed {config.seed_factor}, "
                         f"expansion {config.expansion_factors}")
    if not config.seed_layers or not all(s in ("down", "mid", "up") or "_block" in s for s in config.seed_layers):
        raise ValueError(f"seed_layers={config.seed_layers}; give block kinds ('down', 'mid', 'up') or layer-name "
                         "prefixes ('up_blocks.2.attentions.1')")
    if list(config.expansion_factors) != sorted(config.expansion_factors, reverse=True):
        raise ValueError(f"expansion_factors={config.expansion_factors} must go coarse to fine, e.g. (4, 2, 1)")
    if not config.diffseg_kl_thresholds or config.diffseg_anchors < 2:
        raise ValueError("diffseg_kl_thresholds needs at least one value and diffseg_anchors at least 2")
