"""Synthetic image + mask pairs from text: SeeDiff's original use.

``generate`` samples an image with classifier-free guidance (DDIM) while the attention of the
conditional half of the batch is captured, averaged over the denoising steps (as SeeDiff's and
DiffuMask's attention stores do); ``Synthesizer.sample`` then runs a segmentation method on that
attention, so each image comes with masks for the labels its prompt names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from .attention import AttentionStore, capture_attention, unet_layers
from .maps import collect_maps
from .methods import get_method
from .images import prepare_image
from .pipeline import Segmenter, _Clock
from .prompts import build_prompts
from .results import SegmentationResult


@torch.no_grad()
def generate(model, context: torch.Tensor, uncond: torch.Tensor, *, steps: int = 50, guidance: float = 7.0,
             seed: int = 0) -> torch.Tensor:
    """Sample clean latents with DDIM and classifier-free guidance.

    Args:
        context, uncond (`torch.Tensor`): (1, T, D) text embeddings of the prompt and of "".
        steps (`int`): DDIM steps. guidance (`float`): guidance scale (1 = none).
        seed (`int`): the initial noise, drawn on the CPU so every device gives the same image.

    Returns:
        (1, C, h, w) latents, scaled as the UNet sees them. The batch is [unconditional, conditional],
        so a capture store should keep ``slice(1, None)``.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(model.scheduler.config)
    scheduler.set_timesteps(steps)
    side = int(model.unet.config.sample_size)
    shape = (1, int(model.unet.config.in_channels), side, side)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(model.device, model.unet.dtype)
    latents = latents * scheduler.init_noise_sigma
    both = torch.cat([uncond, context])
    for t in scheduler.timesteps:
        noise = model.unet(torch.cat([latents, latents]), t, encoder_hidden_states=both).sample
        noise_uncond, noise_cond = noise.chunk(2)
        guided = noise_uncond + guidance * (noise_cond - noise_uncond)
        latents = scheduler.step(guided, t, latents).prev_sample
    return latents


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> Image.Image:
    """(1, C, h, w) scaled latents -> an RGB image."""
    pixels = model.vae.decode(latents.to(model.vae.dtype) / model.vae.config.scaling_factor).sample
    array = ((pixels[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array)


@dataclass
class Sample:
    image: Image.Image
    result: SegmentationResult
    prompt: str
    seed: int


class Synthesizer:
    """Generates images from prompts built from labels, with masks from the chosen method.

    Args:
        segmenter (`Segmenter`): supplies the model, settings and text encoding.
        steps, guidance: sampling settings (SeeDiff's demo: 50 steps, guidance 7).
    """

    def __init__(self, segmenter: Segmenter, steps: int = 50, guidance: float = 7.0):
        self.segmenter, self.steps, self.guidance = segmenter, steps, guidance

    def sample(self, labels: Sequence[str], seed: int, words: dict[str, Sequence[str]] | None = None,
               **settings: Any) -> Sample:
        """One image whose prompt names ``labels``, with a mask per label."""
        model, segmenter = self.segmenter.model, self.segmenter
        config = segmenter.config_for(**settings)
        method = get_method(config.method)
        labels = [str(label).strip() for label in labels]
        extras = [w for w in getattr(method, "prompt_extras", lambda _: [])(config) if w not in labels]
        prompts = build_prompts(labels + extras, model.tokenizer, config.prompt_template, config.synonyms,
                                model.max_tokens, words)
        if len(prompts) != 1:
            raise ValueError(f"the labels {labels} do not fit in one prompt of {model.max_tokens} tokens")
        (prompt,) = prompts
        wanted = method.layers(unet_layers(model.unet), config)
        store = AttentionStore(keep=slice(1, None))  # the conditional half of [uncond, cond]
        with capture_attention(model.unet, store, lambda layer: layer.name in wanted, config.attention_chunk):
            latents = generate(model, segmenter._encode_text(prompt.text), segmenter._encode_text(""),
                               steps=self.steps, guidance=self.guidance, seed=seed)
        image = decode(model, latents)
        rgb = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0
        maps = collect_maps([store], prompts, labels + extras, tuple(latents.shape[-2:]), (0.0, 0.0, 1.0, 1.0), rgb)
        maps.extras = extras
        output = method.segment(maps, config)
        # The generated image is its own working grid; its masks take the same region stage as a
        # segmented photo's (fragments dropped, regions scored, outlines traced).
        prepared = prepare_image(image, max(image.size), model.size_multiple)
        result = segmenter._result(prepared, labels, output, config, prompts, {}, _Clock({}, model.device))
        return Sample(image, result, prompt.text, seed)


# ----------------------------------------------------------------------------- datasets on disk


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (index 0 black background, 255 white 'ignore')."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    palette[255 * 3 : 256 * 3] = [255, 255, 255]
    return palette


def coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of an (H, W) mask: run lengths in column-major order, starting with 0s."""
    flat = (np.asarray(mask) > 0).flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def write_dataset(out, synthesizer: Synthesizer, labels: Sequence[str], per_label: int, seed: int = 0,
                  prompt_labels: dict[str, Sequence[str]] | None = None, progress=None, **settings: Any) -> dict:
    """Generate ``per_label`` images for each label into ``out`` (VOC-style folders + COCO JSON).

    Layout: JPEGImages/<name>.jpg, SegmentationClass/<name>.png (palette PNG: 0 background, i for
    the i-th label), ImageSets/Segmentation/train.txt, labels.txt, meta/<name>.json (prompt, seed,
    scores), annotations.json (COCO, one RLE annotation per label mask). A sample whose files exist
    is skipped, so an interrupted run resumes; the COCO file is rebuilt from what is on disk.

    Returns:
        counts: {"generated": n, "skipped": n, "total": n}.
    """
    import json
    from pathlib import Path

    out = Path(out)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation", "meta"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    labels = [str(label).strip() for label in labels]
    (out / "labels.txt").write_text("\n".join(["background", *labels]) + "\n")
    palette = voc_palette()
    counts = {"generated": 0, "skipped": 0, "total": 0}
    for label_index, label in enumerate(labels):
        for i in range(per_label):
            name = f"{_slug(label)}_{i:05d}"
            sample_seed = seed + 1_000_003 * label_index + i
            counts["total"] += 1
            files = [out / "JPEGImages" / f"{name}.jpg", out / "SegmentationClass" / f"{name}.png",
                     out / "meta" / f"{name}.json"]
            if all(f.exists() for f in files):
                counts["skipped"] += 1
            else:
                words = {label: list(prompt_labels[label])} if prompt_labels and label in prompt_labels else None
                sample = synthesizer.sample([label], sample_seed, words=words, **settings)
                classes = np.zeros((sample.image.height, sample.image.width), np.uint8)
                classes[sample.result.masks[0].mask > 0] = label_index + 1
                indexed = Image.fromarray(classes, mode="P")
                indexed.putpalette(palette)
                indexed.save(files[1])
                sample.image.save(files[0], quality=95)
                meta = {"name": name, "label": label, "prompt": sample.prompt, "seed": sample_seed,
                        "score": sample.result.masks[0].score, "method": sample.result.method,
                        "model": sample.result.model, "width": sample.image.width, "height": sample.image.height}
                files[2].write_text(json.dumps(meta, indent=1))  # written last: marks the sample complete
                counts["generated"] += 1
            if progress is not None:
                progress(1)
    _write_index(out, labels)
    return counts


def _write_index(out, labels: list[str]) -> None:
    """train.txt and annotations.json from the samples on disk."""
    import json

    metas = sorted((json.loads(p.read_text()) for p in (out / "meta").glob("*.json")), key=lambda m: m["name"])
    (out / "ImageSets" / "Segmentation" / "train.txt").write_text("".join(m["name"] + "\n" for m in metas))
    categories = [{"id": i + 1, "name": label} for i, label in enumerate(labels)]
    images, annotations = [], []
    for image_id, meta in enumerate(metas, start=1):
        images.append({"id": image_id, "file_name": f"JPEGImages/{meta['name']}.jpg", "width": meta["width"],
                       "height": meta["height"]})
        classes = np.asarray(Image.open(out / "SegmentationClass" / f"{meta['name']}.png"))
        for category in categories:
            mask = classes == category["id"]
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category["id"],
                "segmentation": coco_rle(mask), "area": int(mask.sum()), "iscrowd": 0,
                "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                "score": meta["score"],
            })
    coco = {"info": {"description": "seediff synthetic dataset"}, "images": images, "annotations": annotations,
            "categories": categories}
    (out / "annotations.json").write_text(json.dumps(coco))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in label).strip("_") or "label"
