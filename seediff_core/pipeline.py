"""image -> latents -> attention maps -> method -> masks at the original size.

``Segmenter`` receives a model already loaded (``load_model``) and settings; ``segment`` runs one
image through every stage:

1. read and prepare the image (EXIF, RGB, resize + pad to the model's grid);
2. encode it and bring the latent to timestep t (inversion / noising / clean), cached by image
   hash + settings, so asking again with other labels does not invert again;
3. one UNet pass per prompt (labels that overflow the text window take several passes over the
   same latents), capturing only the layers the method reads;
4. the method turns the maps into soft maps, disjoint masks and a way to score masks;
5. each label's mask is split into its objects (regions: fragments and slivers dropped, only the
   clicked objects where an annotator clicked), each scored alone;
6. masks, regions and their outlines go back to the original width x height.

Devices: stages 2-4 run on the model's device (the captured attention, the working image in
``AttentionMaps`` and every tensor a method makes live there). The hand-overs to the CPU are
these, all in ``_result``: the method's (K, h, w) masks once, before the region stage's
cv2/scipy work; each region's mask back to the device to be scored by the method's ``score``;
the soft maps once, for the results. Each is a copy of a few working-grid masks (about 0.25 MB
per label at 512 px), timed within the "regions" and "to_original" stages.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import CROSS, SELF, AttentionStore, capture_attention, unet_layers
from .config import SeediffConfig, make_config
from .hints import Hints
from .images import PreparedImage, load_image, prepare_image, to_original
from .latents import LatentCache, add_noise, ddim_invert, encode_image
from .limits import Cost, check_cost, check_labels, estimate_cost
from .maps import AttentionMaps, collect_maps
from .methods import get_method, method_defaults
from .methods.base import MethodOutput
from .models import DiffusionModel, load_model
from .prompts import Prompt, build_prompts
from .regions import clicked_objects, outline, split_objects
from .results import LabelMask, Region, SegmentationResult

ImageInput = str | Path | bytes | Image.Image
TEXT_CACHE_SIZE = 256


class Cancelled(RuntimeError):
    """The caller's ``should_stop`` asked to stop; raised before the next UNet call."""


def resolve_config(model: str, model_dir: Path | None, settings: Mapping[str, Any]) -> SeediffConfig:
    """The settings for a run: library < method < the model's seediff.json < ``settings``."""
    return make_config(model=model, model_dir=model_dir, method_defaults=method_defaults(), **settings)


class Segmenter:
    """Segments images into one mask per label with a loaded model.

    Args:
        model (`DiffusionModel`): from ``load_model``.
        **settings: ``SeediffConfig`` fields for every call, over the method's defaults and the
            model folder's ``seediff.json``; each call may override them again.
    """

    def __init__(self, model: DiffusionModel, **settings: Any):
        self.model = model
        self.settings = dict(settings)
        self._configs: dict[str, SeediffConfig] = {}
        self.config = self.config_for()  # validates the settings now, not at the first image
        self._latents = LatentCache(self.config.latent_cache_size)
        self._text = LatentCache(TEXT_CACHE_SIZE)  # prompt -> embeddings; a backend sees many label sets

    def config_for(self, **settings: Any) -> SeediffConfig:
        """The resolved settings of a call with ``settings`` (cached)."""
        merged = {**self.settings, **{k: v for k, v in settings.items() if v is not None}}
        key = json.dumps(merged, sort_keys=True, default=str)
        if key not in self._configs:
            self._configs[key] = resolve_config(self.model.name, self.model.folder, merged)
        return self._configs[key]

    @property
    def latent_cache(self) -> LatentCache:
        """The cache of encoded and noised latents (its ``hits``/``misses`` show reuse)."""
        return self._latents

    @classmethod
    def from_name(cls, model: str = "shapes-world", **settings: Any) -> "Segmenter":
        """Load ``model`` (once per process) and build a segmenter with ``settings``."""
        return cls(load_model(model, settings.get("device"), settings.get("dtype")), **settings)

    def segment(
        self,
        image: ImageInput,
        labels: Sequence[str],
        *,
        hints: Mapping[str, Hints] | None = None,
        words: Mapping[str, Sequence[str]] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **settings: Any,
    ) -> SegmentationResult:
        """One mask per label for ``image``.

        Args:
            image: a path, encoded bytes or a PIL image, in any mode; EXIF orientation is applied.
            labels (`Sequence[str]`): label names; each is also its prompt word unless ``words``
                gives others (``synonyms`` in the settings add more).
            hints (`Mapping[str, Hints]`, *optional*): annotator clicks and boxes per label, in
                fractions of the original image.
            words (`Mapping[str, Sequence[str]]`, *optional*): prompt words per label.
            should_stop (`Callable[[], bool]`, *optional*): asked before every UNet call; True stops
                the run with ``Cancelled`` (a server's deadline or shutdown).
            **settings: per-call overrides of ``SeediffConfig`` fields (e.g. ``timestep=300``).

        Raises:
            ImageError: the image cannot be read.
            ValueError: bad labels or settings.
            CostLimitError: the image would cost more than the limits allow (``limits.py``).
            Cancelled: ``should_stop`` said so.
        """
        config = self.config_for(**settings)
        timings: dict[str, float] = {}
        clock = _Clock(timings, self.model.device)
        prepared = self._prepare(image, config, clock)
        with self._stoppable(should_stop):
            return self._segment_prepared([prepared], labels, [hints], words, config, [timings], clock)[0]

    def segment_batch(
        self,
        images: Sequence[ImageInput],
        labels: Sequence[str],
        *,
        words: Mapping[str, Sequence[str]] | None = None,
        should_stop: Callable[[], bool] | None = None,
        **settings: Any,
    ) -> list[SegmentationResult]:
        """``segment`` for several images with the same labels, in as few UNet passes as their
        shapes allow: images whose working grids match go through each UNet call together (the
        encode, the inversion and every prompt pass). Results equal ``segment``'s one by one within
        float tolerance; the noise of "noise" mode is drawn per image from the same seed.

        Raises:
            ImageError: an image cannot be read (its index is in the message); decode images first
                (``load_image``) to keep one bad image from failing the others.
        """
        from .images import ImageError

        config = self.config_for(**settings)
        timings = [dict() for _ in images]
        clock = _Clock({}, self.model.device)
        prepared = []
        for index, image in enumerate(images):
            try:
                prepared.append(self._prepare(image, config, _Clock(timings[index], self.model.device)))
            except ImageError as error:
                raise ImageError(f"image {index}: {error}") from error
        groups: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(prepared):
            groups.setdefault(item.size, []).append(index)
        results: list[SegmentationResult | None] = [None] * len(images)
        with self._stoppable(should_stop):
            for indices in groups.values():
                for start in range(0, len(indices), config.batch_size):
                    chunk = indices[start : start + config.batch_size]
                    out = self._segment_prepared([prepared[i] for i in chunk], labels, [None] * len(chunk), words,
                                                 config, [timings[i] for i in chunk], clock)
                    for i, result in zip(chunk, out):
                        results[i] = result
        return results  # type: ignore[return-value]

    def _segment_prepared(self, prepared: list[PreparedImage], labels, hints, words, config: SeediffConfig,
                          timings: list[dict[str, float]], clock: "_Clock") -> list[SegmentationResult]:
        """Images of one working grid through noising, capture and the method; shared stages' times
        are split evenly over the images."""
        shared: dict[str, float] = {}
        clock.timings = shared
        labels = [str(label).strip() for label in labels]
        method, extras, prompts, wanted = self._plan(labels, words, config)
        check_cost(self._cost(config, prepared[0].size, len(labels + extras), prompts, wanted, len(prepared)))
        draws = self._noisy_latents(prepared, config, clock)
        with clock("attention"):
            all_maps = self._capture(prepared, draws, prompts, labels + extras, wanted, config)
        results = []
        for item, maps, item_hints, item_timings in zip(prepared, all_maps, hints, timings):
            for stage, seconds in shared.items():
                item_timings[stage] = item_timings.get(stage, 0.0) + seconds / len(prepared)
            maps.extras = extras
            unknown = sorted(set(item_hints or {}) - set(labels))
            if unknown:
                raise ValueError(f"hints for {unknown}, which are not among the labels {labels}")
            (height, width), (_, _, cw, ch) = item.size, item.content
            maps.hints = {label: h.mapped(cw / width, ch / height) for label, h in (item_hints or {}).items() if h}
            own = _Clock(item_timings, self.model.device)
            with own("method"):
                output = method.segment(maps, config)
            results.append(self._result(item, labels, output, config, prompts, item_timings, own, maps.hints))
        return results

    def segment_everything(self, image: ImageInput, should_stop: Callable[[], bool] | None = None,
                           **settings: Any) -> SegmentationResult:
        """DiffSeg's unsupervised segments of ``image``, no labels needed: an empty prompt, self-
        attention merged into segments named "segment 1", "segment 2", ... (largest first).

        Score per segment: the share of its pixels' self-attention that stays inside the segment,
        in [0, 1]: how self-contained the segment is.
        """
        from .methods.diffseg import aggregate, segment_map

        config = self.config_for(**{"method": "diffseg", **settings})
        timings: dict[str, float] = {}
        clock = _Clock(timings, self.model.device)
        prepared = self._prepare(image, config, clock)
        prompts = [Prompt("", {}, 2)]
        wanted = {l.name for l in unet_layers(self.model.unet) if l.kind == SELF}
        check_cost(self._cost(config, prepared.size, 0, prompts, wanted))
        with self._stoppable(should_stop):
            draws = self._noisy_latents([prepared], config, clock)
            with clock("attention"):
                (maps,) = self._capture([prepared], draws, prompts, [], wanted, config)
        with clock("method"):
            segments = segment_map(maps, config)
            valid = maps.valid(tuple(segments.shape[-2:]))
            segments = segments & valid
            segments = segments[segments.flatten(1).sum(1).argsort(descending=True)]
            segments = segments[segments.flatten(1).any(1)]
            aggregated = aggregate(maps)
            output = MethodOutput(segments.float(), segments, lambda m: containment(aggregated, m, maps.latent_size))
        names = [f"segment {i + 1}" for i in range(len(segments))]
        return self._result(prepared, names, output, config, prompts, timings, clock)

    def estimate_cost(self, labels: Sequence[str], size: tuple[int, int] | None = None,
                      words: Mapping[str, Sequence[str]] | None = None, **settings: Any) -> Cost:
        """What one image of ``size`` (width, height; default the model's native square) with
        ``labels`` would cost, without running it (a server checks a project's settings with it).

        Raises:
            ValueError: bad labels or settings.
        """
        from .images import working_shape

        config = self.config_for(**settings)
        side = self.model.native_size
        width, height = size or (side, side)
        grid_h, grid_w, _, _ = working_shape(width, height, config.working_size or side, self.model.size_multiple)
        labels = [str(label).strip() for label in labels]
        _, extras, prompts, wanted = self._plan(labels, words, config)
        return self._cost(config, (grid_h, grid_w), len(labels + extras), prompts, wanted)

    def _plan(self, labels: list[str], words, config: SeediffConfig) -> tuple[Any, list[str], list[Prompt], set[str]]:
        """The method, its extra prompt words, the prompts and the layers to capture for ``labels``."""
        check_labels(labels, config.synonyms, words)
        method = get_method(config.method)
        # Words a method adds to the prompt (T2M's background words) are captured but get no mask.
        extras = [w for w in getattr(method, "prompt_extras", lambda _: [])(config) if w not in labels]
        prompts = build_prompts(labels + extras, self.model.tokenizer, config.prompt_template, config.synonyms,
                                self.model.max_tokens, words)
        return method, extras, prompts, method.layers(unet_layers(self.model.unet), config)

    def _cost(self, config: SeediffConfig, grid: tuple[int, int], labels: int, prompts: list[Prompt],
              wanted: set[str], batch: int = 1) -> Cost:
        scale = self.model.vae_scale_factor
        return estimate_cost(config, (grid[0] // scale, grid[1] // scale), grid, labels, len(prompts),
                             unet_layers(self.model.unet), wanted, batch)

    @contextlib.contextmanager
    def _stoppable(self, should_stop: Callable[[], bool] | None) -> Iterator[None]:
        """While open, every UNet call first asks ``should_stop`` and raises ``Cancelled`` on True:
        the UNet calls are the long, uninterruptible steps (inversion, each prompt pass and draw)."""
        if should_stop is None:
            yield
            return

        def check(_module, _args):
            if should_stop():
                raise Cancelled("stopped before the next UNet call")

        handle = self.model.unet.register_forward_pre_hook(check)
        try:
            yield
        finally:
            handle.remove()

    def _prepare(self, image: ImageInput, config: SeediffConfig, clock: "_Clock") -> PreparedImage:
        with clock("prepare"):
            picture = image if isinstance(image, Image.Image) and image.mode == "RGB" else load_image(image)
            return prepare_image(picture, config.working_size or self.model.native_size, self.model.size_multiple)

    def _capture(self, prepared: list[PreparedImage], draws: list[torch.Tensor], prompts: list[Prompt],
                 labels: list[str], wanted: set[str], config: SeediffConfig) -> list[AttentionMaps]:
        """One UNet pass per prompt and noise draw over the whole batch, capturing the ``wanted``
        layers; one ``AttentionMaps`` per image."""
        layers = unet_layers(self.model.unet)
        stores = []
        for index, prompt in enumerate(prompts):
            # Self-attention hardly depends on the text: read it on the first pass only.
            names = wanted if index == 0 else {l.name for l in layers if l.name in wanted and l.kind == CROSS}
            store = AttentionStore()
            with capture_attention(self.model.unet, store, lambda layer: layer.name in names, config.attention_chunk):
                for noisy in draws:  # several draws accumulate into one running mean
                    self._unet(noisy, config.timestep, self._encode_text(prompt.text))
            stores.append(store)
        out = []
        for row, item in enumerate(prepared):
            height, width = item.size
            x, y, cw, ch = item.content
            out.append(collect_maps(
                stores, prompts, labels, tuple(draws[0].shape[-2:]),
                (x / width, y / height, (x + cw) / width, (y + ch) / height),
                torch.from_numpy(item.rgb).to(self.model.device).permute(2, 0, 1).float() / 255.0, row,
            ))
        return out

    def _result(self, prepared: PreparedImage, labels: list[str], output: MethodOutput, config: SeediffConfig,
                prompts: list[Prompt], timings: dict[str, float], clock: "_Clock",
                hints: Mapping[str, Hints] | None = None) -> SegmentationResult:
        """The method's masks split into regions (fragments and slivers gone, only clicked objects
        for labels with positive clicks), scored, and mapped to the original frame."""
        device = output.masks.device
        with clock("regions"):
            # The hand-over: the method computed on the maps' device; the region stage's cv2/scipy
            # work runs on the CPU from here. Only the regions go back, to be scored by the method.
            masks = output.masks.bool().cpu()
            objects = split_labels(masks, labels, prepared, config, hints or {})
            cleaned = torch.stack([_union(parts, prepared.size) for parts in objects]) if objects else masks
            scores = output.score(cleaned.to(device)).cpu() if objects else torch.zeros(0)
        with clock("to_original"):
            original = masks_to_original(cleaned, prepared)
            soft = _crop_content(output.soft, prepared)
        with clock("regions"):
            items = []
            for k, label in enumerate(labels):
                regions = []
                for part, mask in zip(objects[k], regions_to_original(objects[k], original[k], prepared)):
                    alone = torch.zeros_like(cleaned)
                    alone[k] = part
                    region = Region.from_mask(mask, float(output.score(alone.to(device))[k]),
                                              _outline(part, prepared, config.polygon_tolerance))
                    if region is not None:
                        regions.append(region)
                items.append(LabelMask(label, original[k], float(scores[k]) if original[k].any() else 0.0, soft[k],
                                       regions))
        timings["total"] = sum(v for k, v in timings.items() if k != "total")
        return SegmentationResult(
            masks=items,
            width=prepared.original_size[0],
            height=prepared.original_size[1],
            method=config.method,
            model=self.model.name,
            settings=config.to_dict(),
            prompts=[p.text for p in prompts],
            timings=timings,
        )

    # ------------------------------------------------------------------ stages

    def _noisy_latents(self, prepared: list[PreparedImage], config: SeediffConfig, clock: "_Clock") -> list[torch.Tensor]:
        """The latents the UNet reads, (B, C, h, w) for images of one grid: one tensor, or
        ``noise_draws`` noisings (seeds noise_seed, +1, ...). Each image's latents are cached alone,
        and only the images missing from the cache are encoded or inverted (together)."""
        model = self.model
        keys = [(item.digest, model.source, str(model.dtype)) for item in prepared]
        with clock("encode"):
            clean = self._cached_batch(keys, lambda todo: encode_image(
                model.vae, torch.cat([prepared[i].pixels for i in todo])).to(model.unet.dtype))
        if config.noise_mode == "clean":
            return [clean]
        draws = config.noise_draws if config.noise_mode == "noise" else 1
        out = []
        with clock("invert" if config.noise_mode == "invert" else "noise"):
            for draw in range(draws):
                seed = config.noise_seed + draw
                noisy_keys = [key + (config.noise_mode, config.timestep, config.inversion_steps, seed) for key in keys]
                if config.noise_mode == "invert":
                    def compute(todo):
                        context = self._encode_text("").expand(len(todo), -1, -1)
                        return ddim_invert(model.unet, model.scheduler, clean[todo], context, config.timestep,
                                           config.inversion_steps)
                else:
                    def compute(todo):
                        # Per image, so each image's noise is the same as when it comes alone.
                        return torch.cat([add_noise(model.scheduler, clean[i : i + 1], config.timestep, seed) for i in todo])
                out.append(self._cached_batch(noisy_keys, compute))
        return out

    def _cached_batch(self, keys: list[tuple], compute) -> torch.Tensor:
        """(B, ...) rows from the latent cache, computing the missing rows with ``compute(indices)``."""
        rows: list[torch.Tensor | None] = [self._latents.get(key) for key in keys]
        todo = [i for i, row in enumerate(rows) if row is None]
        if todo:
            for i, value in zip(todo, compute(todo)):
                rows[i] = value[None]
                self._latents.put(keys[i], rows[i])
        return torch.cat(rows)  # type: ignore[arg-type]

    @torch.no_grad()
    def _encode_text(self, text: str) -> torch.Tensor:
        """(1, T, D) text embeddings padded to the window, as Stable Diffusion pipelines do."""
        cached = self._text.get(text)
        if cached is None:
            ids = self.model.tokenizer(text, padding="max_length", max_length=self.model.max_tokens, truncation=True,
                                       return_tensors="pt").input_ids.to(self.model.device)
            cached = self.model.text_encoder(ids)[0].to(self.model.unet.dtype)
            self._text.put(text, cached)
        return cached

    @torch.no_grad()
    def _unet(self, latents: torch.Tensor, t: int, context: torch.Tensor) -> torch.Tensor:
        context = context.expand(latents.shape[0], -1, -1)
        return self.model.unet(latents, t, encoder_hidden_states=context).sample


def containment(aggregated: torch.Tensor, segments: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
    """Per segment, the mean over its latent pixels of the attention mass that stays inside it.

    Args:
        aggregated (`torch.Tensor`): (N, N) attention rows on the latent grid (rows sum to 1).
        segments (`torch.Tensor`): (S, H, W) bool on the image.

    Returns:
        (S,) float in [0, 1].
    """
    if segments.shape[0] == 0:
        return torch.zeros(0, device=aggregated.device)
    small = F.interpolate(segments[None].float(), size=latent_size, mode="area")[0].flatten(1)  # (S, N)
    inside = small @ aggregated.float() @ small.T  # (S, S): attention from s landing in s
    weight = small.sum(dim=1).clamp_min(1e-12)
    return (inside.diagonal() / weight).clamp(0, 1)


def masks_to_original(masks: torch.Tensor, prepared: PreparedImage) -> list[np.ndarray]:
    """(K, h, w) disjoint bool masks on the working grid -> K (H, W) uint8 0/255 masks in the
    original frame. Each mask and the background are interpolated bilinearly and every pixel takes
    the largest, so edges stay smooth and masks stay disjoint."""
    if masks.shape[0] == 0:
        return []
    background = ~masks.any(dim=0, keepdim=True)
    stacked = torch.cat([background, masks]).float()
    original = to_original(stacked, prepared)
    winner = original.argmax(dim=0)
    return [((winner == k + 1).numpy().astype(np.uint8) * 255) for k in range(masks.shape[0])]


def split_labels(masks: torch.Tensor, labels: list[str], prepared: PreparedImage, config: SeediffConfig,
                 hints: Mapping[str, Hints]) -> list[list[torch.Tensor]]:
    """(K, h, w) bool masks on the working grid -> per label its objects ((h, w) bool each), with
    the region settings' fragments and slivers dropped; a label with positive clicks (``hints`` in
    fractions of the grid) keeps only the objects under them."""
    _, _, cw, ch = prepared.content
    min_area = config.min_region_area * cw * ch
    min_width = config.min_region_width * max(cw, ch)
    out = []
    for k, label in enumerate(labels):
        parts = split_objects(masks[k], min_area, min_width)
        hint = hints.get(label)
        out.append(clicked_objects(parts, hint.positive) if hint else parts)
    return out


def regions_to_original(parts: list[torch.Tensor], mask: np.ndarray, prepared: PreparedImage) -> list[np.ndarray]:
    """Split a label's (H, W) uint8 0/255 mask in the original frame along its objects on the grid
    (``parts``, (h, w) bool each): every pixel goes to the nearest object. Returns (H, W) bool each."""
    if len(parts) <= 1:
        return [mask > 0 for _ in parts]
    from scipy.ndimage import distance_transform_edt

    ids = np.zeros(prepared.size, dtype=np.int32)
    for index, part in enumerate(parts, start=1):
        ids[part.numpy()] = index
    _, (rows, cols) = distance_transform_edt(ids == 0, return_indices=True)
    x, y, cw, ch = prepared.content
    width, height = prepared.original_size
    nearest = cv2.resize(ids[rows, cols][y : y + ch, x : x + cw], (width, height), interpolation=cv2.INTER_NEAREST)
    return [(mask > 0) & (nearest == index) for index in range(1, len(parts) + 1)]


def _union(parts: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    return torch.stack(parts).any(dim=0) if parts else torch.zeros(size, dtype=torch.bool)


def _outline(part: torch.Tensor, prepared: PreparedImage, tolerance: float) -> list[np.ndarray]:
    x, y, cw, ch = prepared.content
    width, height = prepared.original_size
    return outline(part[y : y + ch, x : x + cw].numpy(), (width / cw, height / ch), tolerance)


def _crop_content(maps: torch.Tensor, prepared: PreparedImage) -> np.ndarray:
    """(K, h, w) on a grid proportional to the working grid -> (K, h', w') float32 of the content."""
    grid_h, grid_w = prepared.size
    x, y, cw, ch = prepared.content
    if maps.shape[-2:] != (grid_h, grid_w):
        maps = F.interpolate(maps[None].float(), size=(grid_h, grid_w), mode="bilinear", align_corners=False)[0]
    return maps[:, y : y + ch, x : x + cw].float().cpu().numpy()


class _Clock:
    """Adds each stage's wall time (after the device finished its work) to ``timings``."""

    def __init__(self, timings: dict[str, float], device: torch.device):
        self.timings, self.device = timings, device

    def __call__(self, stage: str) -> "_Clock":
        self.stage = stage
        return self

    def __enter__(self) -> None:
        self._sync()
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self._sync()
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + time.perf_counter() - self.start

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
