"""Mask quality on held-out shapes-world scenes, against their exact ground truth.

Each scene (seeds from the test range, never used in training or tuning) is rendered at 256x256 so
the resize path is exercised, and goes through the real path: encode, DDIM inversion, capture,
method. Label variants: the shapes present; the "colour shape" names present; and all four shapes
(as a Label Studio project's label list would be), which also shows how often an absent label
still gets a mask.

    python benchmarks/quality_shapes.py [--scenes 200] [--methods seediff crossattn] [--split test|tune]
                                        [--variants shapes colour-shapes all-shapes] [--set NAME=VALUE ...]

Prints per method and variant: mIoU (mean over labels of dataset-level IoU), mean per-image IoU,
per-label IoU, the absent-label false-positive rate, foreground IoU (all masks against all objects,
labels ignored: finding the objects apart from naming them), and time per image in UNet-forward equivalents;
and DiffSeg's unlabelled segments scored by per-image Hungarian matching (its paper's protocol).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.evaluation import LABEL_VARIANTS, evaluate_scenes, evaluate_segments  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import TEST_SEEDS, TUNE_SEEDS  # noqa: E402


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
    parser.add_argument("--methods", nargs="+", default=["seediff", "diffseg", "diffumask", "t2m", "crossattn"])
    parser.add_argument("--variants", nargs="+", default=list(LABEL_VARIANTS), choices=LABEL_VARIANTS)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args()

    settings = {}
    for item in args.extra:
        name, _, value = item.partition("=")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    segmenter = Segmenter.from_name(args.model, **settings)
    seeds = list((TEST_SEEDS if args.split == "test" else TUNE_SEEDS)[: args.scenes])
    forward = unet_forward_seconds(segmenter)
    print(f"model {args.model}: {args.scenes} {args.split} scenes at {args.size}x{args.size}; "
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
            scores = evaluate_scenes(segmenter, seeds, args.size, variant, method=method)
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
        segments = evaluate_segments(segmenter, seeds, args.size)
        per_image = (time.perf_counter() - start) / len(seeds)
        labels = " ".join(f"{k}={v:.3f}" for k, v in segments.per_class().items())
        print(f"{'diffseg':<10} {'unlabelled':<14} {segments.miou:>6.3f} {'(Hungarian, per image)':>24} "
              f"{per_image:>7.3f} {per_image / forward:>7.1f}  {labels}", flush=True)
        report.append({"method": "diffseg", "variant": "unlabelled (Hungarian)", "miou": segments.miou,
                       "image_iou": float("nan"), "seconds_per_image": per_image,
                       "unet_forward_equivalents": per_image / forward, "per_label": segments.per_class()})
    if args.json:
        args.json.write_text(json.dumps({"settings": segmenter.config.to_dict(), "rows": report}, indent=2))


if __name__ == "__main__":
    main()
