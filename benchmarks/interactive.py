"""Interactive clicks through the real path: a live ``seediff serve`` on the shipped model, one
smart-keypoint click per held-out scene as Label Studio sends it (``params.context.result``).

Per click it measures the wall time of the /predict call (first click on an image, and a second
click on the same image, which reuses the cached latents) and, from the returned brush RLE, the
click precision: the fraction of the returned mask that lies on the clicked object.

    bash tools/dev.sh python benchmarks/interactive.py [--scenes 30] [--size 256]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.rle import rle_to_mask  # noqa: E402
from benchmarks.load import start_server  # noqa: E402
from seediff_core.scenes import SHAPES, TEST_SEEDS, make_scene, render  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image">' + "".join(f'<Label value="{s}"/>' for s in SHAPES) + "</BrushLabels>"
          '<KeyPointLabels name="kp" toName="image" smart="true">' + "".join(f'<Label value="{s}"/>' for s in SHAPES)
          + "</KeyPointLabels></View>")


def click_request(image_url: str, label: str, x: float, y: float) -> dict:
    """A /predict body as Label Studio 1.23 sends it for one positive smart-keypoint click (x, y in %)."""
    keypoint = {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
                "original_width": 0, "original_height": 0, "origin": "manual",
                "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}
    return {"tasks": [{"id": 1, "data": {"image": image_url}}], "project": "1.1700000000", "label_config": CONFIG,
            "params": {"login": None, "password": None, "context": {"result": [keypoint]}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    server, url = start_server(Path(tempfile.mkdtemp(prefix="seediff-interactive-")))
    first, second, precision = [], [], []
    try:
        scenes = (render(make_scene(seed), args.size) for seed in TEST_SEEDS[300:])
        for rendered in (r for r in scenes if len(r.scene.objects) >= 2):
            index = int(np.argmax([m.sum() for m in rendered.masks]))
            truth, label = rendered.masks[index], rendered.scene.objects[index].shape
            distance = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)
            y, x = np.unravel_index(distance.argmax(), distance.shape)
            buffer = io.BytesIO()
            Image.fromarray(rendered.image).save(buffer, "PNG")
            image_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
            body = click_request(image_url, label, (x + 0.5) / args.size * 100, (y + 0.5) / args.size * 100)
            for times in (first, second):
                started = time.perf_counter()
                response = requests.post(f"{url}/predict", json=body, timeout=60)
                times.append(time.perf_counter() - started)
                response.raise_for_status()
            mask = np.zeros(truth.shape, bool)
            for region in response.json()["results"][0]["result"]:
                mask |= rle_to_mask(region["value"]["rle"], args.size, args.size) > 0
            precision.append(float((mask & truth).sum() / max(mask.sum(), 1)))
            if len(precision) == args.scenes:
                break
    finally:
        server.terminate()
        server.wait(30)
    ms = lambda values: {"median_ms": round(1000 * statistics.median(values), 1),  # noqa: E731
                         "p95_ms": round(1000 * float(np.percentile(values, 95)), 1), "max_ms": round(1000 * max(values), 1)}
    print(json.dumps({"scenes": len(precision), "size": args.size, "first_click_on_an_image": ms(first),
                      "second_click_same_image": ms(second), "click_precision_mean": round(float(np.mean(precision)), 3),
                      "click_precision_min": round(float(np.min(precision)), 3)}, indent=1))


if __name__ == "__main__":
    main()
