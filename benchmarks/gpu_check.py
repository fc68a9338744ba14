"""The GPU table: what a Stable Diffusion user's GPU does with seediff, in one run of a few minutes.

On SD 1.5's architecture with random weights (same FLOPs and memory as the real model, no download)
in float16 at 512 px, the library's defaults otherwise:

- seconds per image, one-step noising ("noise") and 10-step DDIM inversion ("invert", the default);
- seconds per image of every method at its own defaults;
- images per second with ``segment_batch`` (noise mode) at batch 1, 8 and 16;
- peak GPU memory of each row (``torch.cuda.max_memory_allocated``);
- on the shipped shapes-world model: float16 on the GPU against float32 on the CPU, mask IoU per
  label over held-out scenes (every label asked).

    python benchmarks/gpu_check.py [--out DIR]        # on a GPU (bash benchmarks/gpu_check.sh runs it)
    python benchmarks/gpu_check.py --device cpu --small   # the same steps, tiny, to check the script

Prints a Markdown table and writes it, with the numbers as JSON, to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from seediff_core import Segmenter, load_model  # noqa: E402
from seediff_core.methods import METHODS  # noqa: E402
from seediff_core.scenes import SHAPES, TEST_SEEDS, make_scene, render  # noqa: E402

LABELS = ["cat", "dog"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device: torch.device, rounds: int) -> tuple[float, float]:
    """(best seconds of ``rounds`` calls after a warm-up, peak GPU GiB over them)."""
    fn()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    best = float("inf")
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return best, peak


def sd15_rows(model, rounds: int) -> list[dict]:
    device = model.device
    photo = Image.fromarray((np.random.default_rng(0).random((384, 512, 3)) * 255).astype(np.uint8))
    rows = []
    for mode in ("noise", "invert"):
        segmenter = Segmenter(model, noise_mode=mode, latent_cache_size=0)
        seconds, peak = measure(lambda: segmenter.segment(photo, LABELS), device, rounds)
        # Stage times of one more call: "regions" holds the hand-over of the masks to the CPU.
        stages = segmenter.segment(photo, LABELS).timings
        rows.append({"row": f"seediff, {mode}" + (" (its defaults)" if mode == "invert" else ""),
                     "seconds_per_image": seconds, "peak_gib": peak, "stages": stages})
    for method in sorted(set(METHODS) - {"seediff"}):
        segmenter = Segmenter(model, method=method, latent_cache_size=0)
        seconds, peak = measure(lambda: segmenter.segment(photo, LABELS), device, rounds)
        rows.append({"row": f"{method}, its defaults", "seconds_per_image": seconds, "peak_gib": peak})
    for batch in (1, 8, 16):
        images = [photo.rotate(i) for i in range(batch)]
        segmenter = Segmenter(model, noise_mode="noise", latent_cache_size=0, batch_size=batch)
        seconds, peak = measure(lambda: segmenter.segment_batch(images, LABELS), device, rounds)
        rows.append({"row": f"segment_batch, noise, batch {batch}", "seconds_per_image": seconds / batch,
                     "images_per_second": batch / seconds, "peak_gib": peak})
    return rows


def precision_agreement(device: str, scenes: int, working_size: int | None) -> dict:
    """float16 on ``device`` against float32 on the CPU, on the shipped model: IoU per label and scene."""
    labels = list(SHAPES)
    images = [Image.fromarray(render(make_scene(seed, touching=i % 2 == 1), 256).image)
              for i, seed in enumerate(TEST_SEEDS[700 : 700 + scenes])]
    full = Segmenter(load_model("shapes-world", device="cpu", dtype="float32"), working_size=working_size)
    half = Segmenter(load_model("shapes-world", device=device, dtype="float16"), working_size=working_size)
    ious = []
    for image in images:
        a, b = full.segment(image, labels), half.segment(image, labels)
        for label in labels:
            x, y = a[label].mask > 0, b[label].mask > 0
            union = (x | y).sum()
            ious.append(1.0 if union == 0 else float((x & y).sum() / union))
    return {"scenes": scenes, "labels": labels, "mean_iou": float(np.mean(ious)), "min_iou": float(np.min(ious))}


def table(info: dict) -> str:
    lines = [f"GPU check on {info['device_name']} (torch {info['torch']}), {info['model']}:", "",
             "| run | seconds per image | images per second | peak GPU memory (GiB) |", "|---|---|---|---|"]
    for row in info["rows"]:
        rate = row.get("images_per_second", 1 / row["seconds_per_image"])
        lines.append(f"| {row['row']} | {row['seconds_per_image']:.3f} | {rate:.1f} | {row['peak_gib']:.2f} |")
    for row in info["rows"]:
        if "stages" in row:
            lines.append(f"\nstages of '{row['row']}' (s): " + ", ".join(
                f"{stage} {seconds:.3f}" for stage, seconds in row["stages"].items()))
    agreement = info["precision"]
    lines += ["", f"float16 ({info['device']}) vs float32 (CPU) on shapes-world, {agreement['scenes']} held-out "
              f"scenes x {len(agreement['labels'])} labels: mask IoU mean {agreement['mean_iou']:.3f}, "
              f"min {agreement['min_iou']:.3f}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--small", action="store_true", help="the tiny SD 1.5-layout model: checks the script only")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scenes", type=int, default=12)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device here; run with --device cpu --small to check the script")
    folder = Path(tempfile.mkdtemp(prefix="seediff-gpu-check-"))
    if args.small:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import build_tiny_sd

        model = load_model(str(build_tiny_sd(folder / "tiny")), device=args.device, dtype="float16")
        name, rounds, scenes, working_size = "tiny SD 1.5 layout (script check only)", 1, 2, 128
    else:
        from core_speed import build_sd15

        model = build_sd15(args.device, torch.float16, folder / "tokenizer")
        name, rounds, scenes, working_size = "SD 1.5 architecture, random weights, float16, 512 px", args.rounds, \
            args.scenes, None
    start = time.perf_counter()
    info = {"device": args.device, "model": name, "torch": torch.__version__,
            "device_name": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
            "rows": sd15_rows(model, rounds)}
    info["precision"] = precision_agreement(args.device, scenes, working_size)
    info["seconds"] = time.perf_counter() - start
    text = table(info)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_table.md").write_text(text + "\n")
        (args.out / "gpu_check.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
