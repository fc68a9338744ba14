"""How good were the pre-labels? Each annotation submitted in Label Studio is compared with the
masks predicted for its task (IoU per label), and the numbers accumulate per project.

Predicted masks are kept per task, downsampled to at most 512 pixels a side (PNG), so the record is
a few kilobytes per task; annotations are rasterised at the same size.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .rle import rle_to_mask

RECORD_SIDE = 512


def record(width: int, height: int, masks: dict[str, np.ndarray], model_version: str) -> str:
    """The JSON string stored for a task's prediction."""
    scale = min(1.0, RECORD_SIDE / max(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    encoded = {}
    for label, mask in masks.items():
        small = cv2.resize((mask > 0).astype(np.uint8) * 255, size, interpolation=cv2.INTER_NEAREST)
        buffer = io.BytesIO()
        # Fast compression: two-level masks compress well at any level, and this runs per task.
        Image.fromarray(small).save(buffer, format="PNG", compress_level=1)
        encoded[label] = base64.b64encode(buffer.getvalue()).decode()
    return json.dumps({"width": width, "height": height, "size": size, "model_version": model_version, "masks": encoded})


def annotation_masks(results: list[dict], size: tuple[int, int]) -> dict[str, np.ndarray]:
    """Union of an annotation's regions per label, rasterised at ``size`` (w, h)."""
    width, height = size
    out: dict[str, np.ndarray] = {}
    for region in results:
        kind, value = region.get("type", ""), region.get("value") or {}
        labels = value.get(kind) or []
        ow, oh = region.get("original_width"), region.get("original_height")
        mask = None
        if kind == "brushlabels" and value.get("rle") and ow and oh:
            full = rle_to_mask(value["rle"], oh, ow)
            mask = cv2.resize(full, (width, height), interpolation=cv2.INTER_NEAREST) > 0
        elif kind == "polygonlabels" and value.get("points"):
            points = np.array(value["points"], dtype=np.float64) / 100 * [width, height]
            canvas = np.zeros((height, width), np.uint8)
            cv2.fillPoly(canvas, [np.round(points - 0.5).astype(np.int32)], 1)
            mask = canvas > 0
        elif kind == "bitmasklabels" and value.get("imageDataURL"):
            data = base64.b64decode(value["imageDataURL"].split(",", 1)[-1])
            picture = np.asarray(Image.open(io.BytesIO(data)).convert("L"))
            mask = cv2.resize(picture, (width, height), interpolation=cv2.INTER_NEAREST) > 0
        if mask is None:
            continue
        for label in labels:
            out[label] = out.get(label, np.zeros((height, width), bool)) | mask
    return out


def compare(stored: str, results: list[dict]) -> dict[str, float]:
    """IoU per label between a stored prediction and an annotation's results (labels in either)."""
    data = json.loads(stored)
    width, height = data["size"]
    predicted = {label: np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) > 0 for label, png in data["masks"].items()}
    annotated = annotation_masks(results, (width, height))
    scores = {}
    for label in sorted(set(predicted) | set(annotated)):
        p = predicted.get(label, np.zeros((height, width), bool))
        a = annotated.get(label, np.zeros((height, width), bool))
        union = np.count_nonzero(p | a)
        if union:
            scores[label] = np.count_nonzero(p & a) / union
    return scores


def accumulate(summary: str | None, scores: dict[str, float], model_version: str) -> str:
    """Add one annotation's per-label IoUs to a project's running summary (JSON)."""
    data: dict[str, Any] = json.loads(summary) if summary else {"annotations": 0, "labels": {}, "versions": {}}
    data["annotations"] += 1
    data["versions"][model_version] = data["versions"].get(model_version, 0) + 1
    for label, value in scores.items():
        entry = data["labels"].setdefault(label, {"count": 0, "iou_sum": 0.0})
        entry["count"] += 1
        entry["iou_sum"] += value
    return json.dumps(data)


def report(summary: str | None) -> dict[str, Any]:
    """The summary with mean IoUs, as /metrics shows it."""
    if not summary:
        return {"annotations": 0}
    data = json.loads(summary)
    labels = {k: {"count": v["count"], "mean_iou": round(v["iou_sum"] / v["count"], 4)} for k, v in data["labels"].items()}
    means = [v["mean_iou"] for v in labels.values()]
    return {"annotations": data["annotations"], "mean_iou": round(float(np.mean(means)), 4) if means else None,
            "labels": labels, "model_versions": data["versions"]}
