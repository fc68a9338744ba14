"""Does a model's attention carve objects that touch, and do its words label them per pixel?

Stable Diffusion's self-attention groups the pixels of one object (DiffSeg's segments carve objects
on real photos) and its cross-attention maps follow the named object pixel by pixel (DAAM, T2M).
This probe measures both on shapes-world scenes where every object touches or partly covers
another (``make_scene(seed, touching=True)``, held-out seeds), flat and patterned, rendered at
256 px, every shape label asked on every image:

1. **segments' best IoU**: DiffSeg's unsupervised segments (``Segmenter.segment_everything``, the
   model's DiffSeg settings, then each probe timestep in the same mode); per object, the IoU of the
   segment that matches it best; mean over objects. Touching objects merged into one segment, or an
   object split in two, score low.
2. **own-label share**: the share of an object's pixels given its own label, per pixel, with no
   object grouping: SeeDiff with ``label_per_object`` off (the model's other SeeDiff settings), and
   per cross-attention layer and timestep the plain argmax over the four shape words' maps
   (one-step noising, as ``binding.py``), upsampled to the image. Mean over objects; chance is
   about 0.25.

    python benchmarks/touching_probe.py [--model FOLDER] [--scenes 20] [--split test|tune] [--timesteps 50 200 500]
                                        [--history runs/sw/probe.jsonl] [--curve FOLDER/probe.png] [--json out.json]

--history appends one JSON line (the model's training step and the summary) so a training run keeps
a record of every export; --curve draws both rows against the step from that history.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.binding import cross_attention, save_record  # noqa: E402
from seediff_core.attention import CROSS  # noqa: E402
from seediff_core.config import parse_assignments  # noqa: E402
from seediff_core.evaluation import iou  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import SHAPES, TEST_SEEDS, TUNE_SEEDS, RenderedScene, make_scene, render  # noqa: E402

KINDS = ("flat", "patterned")
IMAGE_SIZE = 256


def touching_scenes(split: str, count: int, patterned: bool, size: int = IMAGE_SIZE) -> list[RenderedScene]:
    """The first ``count`` touching scenes of ``split`` ("test" or "tune")."""
    seeds = TEST_SEEDS if split == "test" else TUNE_SEEDS
    return [render(make_scene(int(seed), patterned=patterned, touching=True), size) for seed in seeds[:count]]


def best_segment_ious(segments: list[np.ndarray], objects: list[np.ndarray]) -> list[float]:
    """Per object (visible mask), the IoU of the segment matching it best (0 without segments)."""
    return [max((iou(s, o) for s in segments), default=0.0) for o in objects if o.any()]


def own_label_shares(masks: dict[str, np.ndarray], rendered: RenderedScene) -> list[float]:
    """Per object, the share of its visible pixels inside the mask of its own shape label."""
    return [float((masks[obj.shape][m] > 0).mean()) for obj, m in zip(rendered.scene.objects, rendered.masks) if m.any()]


def layer_label_shares(model, scenes: list[RenderedScene], t: int, size: int | None = None) -> dict[str, float]:
    """Per cross-attention layer at timestep ``t``: mean own-label share when every pixel takes the
    shape word whose map (that layer's, bilinearly upsampled) is largest there. The scenes are
    rendered at ``size`` (default: the model's native size) for the UNet."""
    native = [render(s.scene, size or model.native_size) for s in scenes]
    prompts, store = cross_attention(model, native, [list(SHAPES)] * len(native), t)
    out = {}
    for name in store.names(kind=CROSS):
        attention, (h, w) = store.mean(name), store.grid[name]
        shares = []
        for row, (prompt, rendered) in enumerate(zip(prompts, native)):
            words = torch.stack([attention[row, :, list(prompt.tokens[label])].mean(dim=1) for label in SHAPES])
            maps = F.interpolate(words.reshape(1, len(SHAPES), h, w).float(), size=rendered.image.shape[:2],
                                 mode="bilinear", align_corners=False)[0]
            winner = maps.argmax(dim=0).numpy()
            shares += own_label_shares({label: winner == k for k, label in enumerate(SHAPES)}, rendered)
        out[name.replace(".transformer_blocks.0.attn2", "")] = float(np.mean(shares))
    return out


def probe(segmenter: Segmenter, count: int, split: str, timesteps: list[int]) -> dict:
    """Every number the probe prints, per scene kind (see the module docstring)."""
    result = {"scenes": count, "split": split, "kinds": {}}
    diffseg = segmenter.config_for(method="diffseg")
    for kind in KINDS:
        scenes = touching_scenes(split, count, patterned=kind == "patterned")
        row: dict = {"objects": sum(len(s.masks) for s in scenes), "segments": {}, "layers": {}}
        settings = [("model", {})] + [(f"t={t}", {"timestep": t}) for t in timesteps if t != diffseg.timestep]
        for key, extra in settings:
            ious = []
            for rendered in scenes:
                found = segmenter.segment_everything(Image.fromarray(rendered.image), **extra)
                ious += best_segment_ious([m.mask > 0 for m in found.masks], rendered.masks)
            row["segments"][key] = float(np.mean(ious))
        shares = []
        for rendered in scenes:
            found = segmenter.segment(Image.fromarray(rendered.image), list(SHAPES), method="seediff", label_per_object=False)
            shares += own_label_shares({m.label: m.mask for m in found.masks}, rendered)
        row["own_label_seediff"] = float(np.mean(shares))
        for t in timesteps:
            row["layers"][t] = layer_label_shares(segmenter.model, scenes, t, segmenter.config.working_size)
        result["kinds"][kind] = row
    result["settings"] = {"diffseg": f"{diffseg.noise_mode} t={diffseg.timestep}",
                          "working_size": segmenter.config.working_size or segmenter.model.native_size,
                          "seediff": {k: v for k, v in segmenter.config_for(method="seediff").to_dict().items()
                                      if k in ("noise_mode", "timestep", "seed_factor", "seed_layers")}}
    return result


def summary(result: dict) -> dict:
    """The two rows per kind: segments' best IoU at the model's DiffSeg settings, SeeDiff's per-pixel
    own-label share, and the best layer's share."""
    out = {}
    for kind, row in result["kinds"].items():
        layers = [(share, int(t), name) for t, per_layer in row["layers"].items() for name, share in per_layer.items()]
        best = max(layers) if layers else (float("nan"), None, None)
        out[kind] = {"segments_best_iou": row["segments"]["model"], "own_label_share": row["own_label_seediff"],
                     "best_layer_share": best[0], "best_layer": [best[1], best[2]]}
    return out


def print_report(result: dict) -> None:
    print(f"{result['scenes']} touching {result['split']} scenes per kind at {IMAGE_SIZE} px, every shape label asked; "
          f"DiffSeg {result['settings']['diffseg']}, SeeDiff {json.dumps(result['settings']['seediff'])}, "
          f"working size {result['settings']['working_size']}")
    for kind, row in result["kinds"].items():
        print(f"\n{kind} ({row['objects']} objects)")
        print("  segments' best IoU: " + ", ".join(f"{k} {v:.3f}" for k, v in row["segments"].items()))
        print(f"  own-label share, SeeDiff without labels per object: {row['own_label_seediff']:.3f}")
        names = list(next(iter(row["layers"].values())))
        print("  own-label share, per-pixel argmax of one layer's maps (chance ~0.25):")
        print("  " + f"{'layer':<28}" + "".join(f"{'t=' + str(t):>8}" for t in row["layers"]))
        for name in names:
            print("  " + f"{name:<28}" + "".join(f"{row['layers'][t][name]:>8.3f}" for t in row["layers"]))


def draw_curve(history: Path, out: Path) -> None:
    """Both rows (flat and patterned) against the training step from ``history``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = sorted((json.loads(line) for line in history.read_text().splitlines() if line.strip()),
                     key=lambda r: r["step"] or 0)
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for kind, style in (("flat", "--"), ("patterned", "-")):
        ax.plot(steps, [r["summary"][kind]["segments_best_iou"] for r in records], "o" + style, color="tab:blue",
                label=f"segments' best IoU ({kind})")
        ax.plot(steps, [r["summary"][kind]["own_label_share"] for r in records], "s" + style, color="tab:green",
                label=f"own-label share, SeeDiff ({kind})")
        ax.plot(steps, [r["summary"][kind]["best_layer_share"] for r in records], "^" + style, color="tab:purple",
                label=f"own-label share, best layer ({kind})")
    ax.axhline(0.8, color="grey", lw=0.8, ls=":")
    ax.axhline(0.25, color="grey", lw=0.8, ls=":")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("training step")
    ax.set_ylabel("touching test scenes")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-world")
    parser.add_argument("--scenes", type=int, default=20, help="touching scenes per kind (flat, patterned)")
    parser.add_argument("--split", choices=["test", "tune"], default="test")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--history", type=Path, help="append this run's summary as one JSON line")
    parser.add_argument("--curve", type=Path, help="draw the history's rows vs step")
    parser.add_argument("--json", type=Path, help="write the full numbers here")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE",
                        help="settings for every method, e.g. working_size=256 to feed a 128 px model 256 px")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    segmenter = Segmenter.from_name(args.model, device="cpu", dtype="float32", **parse_assignments(args.extra))
    result = probe(segmenter, args.scenes, args.split, args.timesteps)
    print_report(result)
    save_record(segmenter.model, result, {"summary": summary(result), "seconds": round(time.perf_counter() - start, 1)},
                args.json, args.history)
    if args.curve:
        draw_curve(args.history, args.curve)


if __name__ == "__main__":
    main()
