"""Mask quality on held-out shapes-world scenes, against their exact ground truth.

Each scene (seeds from the test range, never used in training or tuning) is rendered at 256x256 so
the resize path is exercised, and goes through the real path: encode, DDIM inversion, capture,
method. Label variants: the shapes present; the "colour shape" names present; and all four shapes
(as a Label Studio project's label list would be), which also shows how often an absent label
still gets a mask.

    python benchmarks/quality_shapes.py [--scenes 200] [--methods seediff crossattn] [--split test|tune]
                                        [--variants shapes colour-shapes all-shapes] [--flat] [--touching]
                                        [--set NAME=VALUE ...]

--touching draws the split's scenes with every object touching or partly covering another
(``make_scene(seed, touching=True)``): where objects must be told apart from their neighbours.

Prints per method and variant: mIoU (mean over labels of dataset-level IoU), mean per-image IoU,
per-label IoU, the absent-label false-positive rate, foreground IoU (all masks against all objects,
labels ignored: finding the objects apart from naming them), and time per image in UNet-forward equivalents;
and DiffSeg's unlabelled segments scored by per-image Hungarian matching (its paper's protocol). "nomodel" is
the baseline that needs no model: saturated connected components, each given an asked label at random.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.config import parse_assignments  # noqa: E402
from seediff_core.evaluation import LABEL_VARIANTS, IoUAccumulator, evaluate_scenes, evaluate_segments, scene_labels  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import TEST_SEEDS, TUNE_SEEDS, make_scene, render  # noqa: E402


def no_model_baseline(seeds, size: int, variant: str, patterned: bool, touching: bool = False) -> IoUAccumulator:
    """What needs no model at all: saturated pixels (objects are saturated, backgrounds muted), split
    into connected components, each given one of the asked labels at random. A labelled method must
    beat this to be reading anything from the words."""
    rng = np.random.default_rng(0)
    scores = IoUAccumulator()
    for seed in seeds:
        rendered = render(make_scene(int(seed), patterned=patterned, touching=touching), size)
        hsv = cv2.cvtColor(rendered.image, cv2.COLOR_RGB2HSV_FULL)
        saturated = ((hsv[..., 1] >= 0.45 * 255) & (hsv[..., 2] >= 0.35 * 255)).astype(np.uint8)
        count, components = cv2.connectedComponents(cv2.morphologyEx(saturated, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)))
        labels = scene_labels(rendered.scene, variant)
        masks = {label: np.zeros(saturated.shape, bool) for label in labels}
        for index in range(1, count):
            part = components == index
            if part.sum() >= 0.002 * part.size:
                masks[labels[int(rng.integers(len(labels)))]] |= part
        for label, mask in masks.items():
            scores.add(label, mask, rendered.label_mask(label))
        scores.add_foreground(list(masks.values()), rendered.masks)
    return scores


def unet_forward_seconds(segmenter: Segmenter, repeat: int = 20) -> float:
    model = segmenter.model
    side = model.native_size // model.vae_scale_factor
    latents = torch.randn(1, model.unet.config.in_channels, side, side, device=model.device, dtype=model.dtype)
    context = segmenter._encode_text("a photo of a circle")
    with torch.no_grad():
        model.unet(latents, 200, encoder_hidden_states=context)
        start = time.perf_counter()
        for _ in range(repeat):
            model.unet(latents, 200, encoder_hidden_states=context)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-world")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--split", choices=["test", "tune"], default="test")
    parser.add_argument("--methods", nargs="+", default=["seediff", "diffseg", "diffumask", "t2m", "crossattn", "nomodel"],
                        help="methods, and 'nomodel' for the baseline that needs no model")
    parser.add_argument("--variants", nargs="+", default=list(LABEL_VARIANTS), choices=LABEL_VARIANTS)
    parser.add_argument("--flat", action="store_true", help="flat-coloured scenes (the harder split) instead of patterned")
    parser.add_argument("--touching", action="store_true", help="scenes whose every object touches another")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    settings = parse_assignments(args.extra)
    segmenter = Segmenter.from_name(args.model, **settings)
    seeds = list((TEST_SEEDS if args.split == "test" else TUNE_SEEDS)[: args.scenes])
    forward = unet_forward_seconds(segmenter)
    print(f"model {args.model}: {args.scenes} {args.split} {'touching ' if args.touching else ''}{'flat' if args.flat else 'patterned'} scenes at {args.size}x{args.size}; "
          f"bare UNet forward {forward * 1000:.1f} ms; settings {json.dumps(segmenter.config.to_dict())}")
    # Warm the latent cache so every method is timed on its own work plus one fresh inversion.
    report = []
    header = f"{'method':<10} {'labels':<14} {'mIoU':>6} {'img IoU':>7} {'absent FP':>9} {'fg IoU':>6} {'s/img':>7} {'fwd-eq':>7}  per-label IoU"
    print(header)
    print("-" * len(header))
    for method in args.methods:
        for variant in args.variants:
            segmenter.latent_cache._items.clear()
            start = time.perf_counter()
            if method == "nomodel":
                scores = no_model_baseline(seeds, args.size, variant, not args.flat, args.touching)
            else:
                scores = evaluate_scenes(segmenter, seeds, args.size, variant, not args.flat, args.touching, method=method)
            per_image = (time.perf_counter() - start) / len(seeds)
            labels = " ".join(f"{k}={v:.3f}" for k, v in scores.per_label().items())
            absent = scores.absent_false_positive_rate
            print(f"{method:<10} {variant:<14} {scores.miou:>6.3f} {scores.mean_image_iou:>7.3f} "
                  f"{'-' if absent != absent else f'{absent:.2f}':>9} {scores.foreground_iou:>6.3f} {per_image:>7.3f} {per_image / forward:>7.1f}  {labels}",
                  flush=True)
            report.append({"method": method, "variant": variant, "miou": scores.miou, "image_iou": scores.mean_image_iou,
                           "absent_false_positive_rate": absent, "foreground_iou": scores.foreground_iou, "seconds_per_image": per_image,
                           "unet_forward_equivalents": per_image / forward, "per_label": scores.per_label()})
    if "diffseg" in args.methods:
        segmenter.latent_cache._items.clear()
        start = time.perf_counter()
        segments = evaluate_segments(segmenter, seeds, args.size, not args.flat, args.touching)
        per_image = (time.perf_counter() - start) / len(seeds)
        labels = " ".join(f"{k}={v:.3f}" for k, v in segments.per_class().items())
        print(f"{'diffseg':<10} {'unlabelled':<14} {segments.miou:>6.3f} {'(Hungarian, per image)':>24} "
              f"{per_image:>7.3f} {per_image / forward:>7.1f}  {labels}", flush=True)
        report.append({"method": "diffseg", "variant": "unlabelled (Hungarian)", "miou": segments.miou,
                       "image_iou": float("nan"), "seconds_per_image": per_image,
                       "unet_forward_equivalents": per_image / forward, "per_label": segments.per_class()})
    if args.json:
        split = {"split": args.split, "scenes": args.scenes, "flat": args.flat, "touching": args.touching}
        args.json.write_text(json.dumps({"settings": segmenter.config.to_dict(), **split, "rows": report}, indent=2))


if __name__ == "__main__":
    main()
