"""Do the scores predict quality? Spearman's rank correlation between score and IoU on held-out
shapes-world scenes, all four shape labels asked on every image (as a Label Studio project asks).

Per region (a label's mask on an image; a mask given to a label the image lacks has IoU 0) and per
task (the prediction's score, the mean of its regions' scores, against the image's mean IoU over its
present labels and its wrongly labelled masks): the Data Manager sorts tasks by the latter.
Each of SeeDiff's ``seediff_score`` options is measured on the same masks.

    python benchmarks/calibration.py [--scenes 200] [--model shapes-world] [--set NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.config import parse_assignments  # noqa: E402
from seediff_core.evaluation import iou  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import SHAPES, TEST_SEEDS, make_scene, render  # noqa: E402

OPTIONS = ("contrast", "share", "contrast*share")


def measure(segmenter: Segmenter, seeds, score: str, settings: dict) -> dict:
    regions, tasks = [], []
    for seed in seeds:
        rendered = render(make_scene(int(seed)), 256)
        result = segmenter.segment(Image.fromarray(rendered.image), list(SHAPES), seediff_score=score, **settings)
        values, image_ious = [], []
        for item in result.masks:
            truth = rendered.label_mask(item.label)
            if not item.mask.any():
                if truth.any():
                    image_ious.append(0.0)
                continue
            value = iou(item.mask, truth) if truth.any() else 0.0
            regions.append((item.score, value))
            values.append(item.score)
            image_ious.append(value)
        if values:
            tasks.append((float(np.mean(values)), float(np.mean(image_ious))))
    rho = lambda pairs: float(spearmanr(*zip(*pairs)).statistic) if len(pairs) > 2 else float("nan")  # noqa: E731
    return {"score": score, "regions": len(regions), "region_spearman": rho(regions), "tasks": len(tasks),
            "task_spearman": rho(tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-world")
    parser.add_argument("--scenes", type=int, default=200)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    settings = parse_assignments(args.extra)
    segmenter = Segmenter.from_name(args.model, device="cpu")
    print(f"{args.scenes} test scenes, labels {list(SHAPES)} on every image, model {args.model}")
    print(f"{'score':<16} {'regions':>7} {'Spearman':>9} {'tasks':>6} {'Spearman':>9}")
    for option in OPTIONS:
        row = measure(segmenter, TEST_SEEDS[: args.scenes], option, settings)
        print(f"{option:<16} {row['regions']:>7} {row['region_spearman']:>9.3f} {row['tasks']:>6} {row['task_spearman']:>9.3f}",
              flush=True)


if __name__ == "__main__":
    main()
