"""``seediff eval``: predicted masks against ground truth, per label, with a calibration check.

Sources (truth or predictions), each read into {image key: Entry}:
- a Label Studio export (JSON list of tasks): annotations for truth, predictions for predictions
  (``model_version`` filters them); brush RLE, polygons and bitmasks;
- a Label Studio project (``project:ID``, predictions read through the API; LABEL_STUDIO_URL and
  LABEL_STUDIO_API_KEY from the environment);
- a VOC folder (``SegmentationClass/*.png`` class-index PNGs, class names from ``labels.txt`` or
  ``--labels``, index 0 background);
- a COCO JSON (RLE, uncompressed or compressed, or polygons; ``score`` on an annotation is kept);
- a ``seediff segment`` output folder (``<stem>/result.json`` and its masks, with scores).

Images are matched by file stem (Label Studio's upload prefix ``<8 hex>-`` removed). Every label of
the truth's label set is scored on every image, absent labels included, as a Label Studio project
asks them: a mask predicted for a label the image lacks counts against that label.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from seediff_core.evaluation import IoUAccumulator

from .quality import annotation_masks

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


@dataclass
class Entry:
    """One image's masks (label -> (H, W) bool), scores (label -> float, predictions only) and,
    when known, the image file for overlays."""

    masks: dict[str, np.ndarray]
    scores: dict[str, float] = field(default_factory=dict)
    image: Path | None = None
    size: tuple[int, int] | None = None  # (H, W)


def image_key(name: str) -> str:
    """'…/data/upload/3/1a2b3c4d-scene 1.png' -> 'scene 1'."""
    stem = Path(str(name).split("?d=")[-1]).stem
    return _UPLOAD_PREFIX.sub("", stem)


# ---------------------------------------------------------------------- readers


def read(spec: str, role: str, labels: list[str] | None = None, model_version: str | None = None) -> dict[str, Entry]:
    """Read a truth or prediction source (see the module docstring). ``role`` is "truth" or "pred".

    Raises:
        ValueError: the source is not one of the known formats (the message says which exist).
    """
    if spec.startswith("project:"):
        return read_project(int(spec.split(":", 1)[1]), model_version)
    path = Path(spec)
    if path.is_dir():
        if (path / "SegmentationClass").is_dir():
            return read_voc(path, labels)
        if any(path.glob("*/result.json")):
            return read_seediff(path)
        raise ValueError(f"{path}: a folder must be VOC-style (SegmentationClass/) or `seediff segment` output "
                         "(<image>/result.json)")
    if path.suffix.lower() == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and {"images", "annotations", "categories"} <= set(data):
            return read_coco(data, path.parent)
        if isinstance(data, list):
            return read_label_studio(data, "annotations" if role == "truth" else "predictions", model_version)
    raise ValueError(f"{spec}: not a Label Studio export, COCO JSON, VOC folder, seediff output folder or project:ID")


def read_label_studio(tasks: list[dict], kind: str, model_version: str | None = None) -> dict[str, Entry]:
    """A Label Studio export (JSON list of tasks). ``kind``: "annotations" or "predictions" (falls
    back to the other when a task has none of ``kind``)."""
    out = {}
    for task in tasks:
        items = [a for a in task.get(kind) or [] if not a.get("was_cancelled")]
        if kind == "predictions" and model_version:
            items = [p for p in items if p.get("model_version") == model_version]
        if not items and kind == "predictions" and not model_version:
            items = task.get("annotations") or []
        if not items:
            continue
        item = items[-1]
        results = item.get("result") or []
        size = next(((r["original_height"], r["original_width"]) for r in results if r.get("original_width")), None)
        if size is None:
            continue
        masks = annotation_masks(results, (size[1], size[0]))
        scores = {}
        for region in results:
            kind_ = region.get("type", "")
            for label in (region.get("value") or {}).get(kind_) or []:
                if region.get("score") is not None:
                    scores[label] = max(scores.get(label, 0.0), float(region["score"]))
        data = task.get("data") or {}
        name = next((v for v in data.values() if isinstance(v, str)), str(task.get("id")))
        out[image_key(name)] = Entry(masks, scores, None, size)
    return out


def read_project(project_id: int, model_version: str | None) -> dict[str, Entry]:
    """A Label Studio project's predictions, through the API."""
    from .prelabel import connect, project_tasks
    from .settings import BackendSettings

    client = connect(BackendSettings.from_env())
    tasks = list(project_tasks(client, project_id))
    for task in tasks:
        task["predictions"] = [p if isinstance(p, dict) else p.model_dump() for p in task.get("predictions") or []]
    return read_label_studio(tasks, "predictions", model_version)


def read_voc(folder: Path, labels: list[str] | None) -> dict[str, Entry]:
    names = labels
    if (folder / "labels.txt").is_file():
        names = [line.strip() for line in (folder / "labels.txt").read_text().splitlines() if line.strip()][1:]
    if not names:
        raise ValueError(f"{folder}: no labels.txt; give the class names in index order with --labels")
    out = {}
    for png in sorted((folder / "SegmentationClass").glob("*.png")):
        classes = np.asarray(Image.open(png))
        masks = {label: classes == i + 1 for i, label in enumerate(names)}
        image = next((p for p in (folder / "JPEGImages").glob(f"{png.stem}.*")), None) if (folder / "JPEGImages").is_dir() else None
        out[image_key(png.name)] = Entry(masks, {}, image, classes.shape)
    return out


def read_coco(data: dict, root: Path) -> dict[str, Entry]:
    names = {c["id"]: c["name"] for c in data["categories"]}
    out: dict[str, Entry] = {}
    images = {i["id"]: i for i in data["images"]}
    for info in images.values():
        size = (int(info["height"]), int(info["width"]))
        image = root / info["file_name"]
        out[image_key(info["file_name"])] = Entry({n: np.zeros(size, bool) for n in names.values()}, {},
                                                  image if image.is_file() else None, size)
    for ann in data["annotations"]:
        info = images[ann["image_id"]]
        entry = out[image_key(info["file_name"])]
        label = names[ann["category_id"]]
        entry.masks[label] |= coco_mask(ann["segmentation"], entry.size)
        if ann.get("score") is not None:
            entry.scores[label] = max(entry.scores.get(label, 0.0), float(ann["score"]))
    return out


def coco_mask(segmentation, size: tuple[int, int]) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed RLE, or compressed RLE string) -> (H, W) bool."""
    import cv2

    height, width = size
    if isinstance(segmentation, list):
        canvas = np.zeros(size, np.uint8)
        for polygon in segmentation:
            points = np.array(polygon, dtype=np.float64).reshape(-1, 2)
            cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
        return canvas > 0
    counts = segmentation["counts"]
    if isinstance(counts, str):
        counts = _decode_compressed_counts(counts)
    flat = np.zeros(height * width, bool)
    position, value = 0, False
    for run in counts:
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    return flat.reshape((width, height)).T  # column-major


def _decode_compressed_counts(text: str) -> list[int]:
    """COCO's compressed RLE string (LEB128-like, 5 bits a character, deltas after the second run)."""
    counts: list[int] = []
    position = 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[position]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position += 1
            shift += 1
            if not more and (c & 0x10):
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def read_seediff(folder: Path) -> dict[str, Entry]:
    out = {}
    for result_file in sorted(folder.glob("*/result.json")):
        info = json.loads(result_file.read_text())
        masks, scores = {}, {}
        for entry in info["labels"]:
            masks[entry["label"]] = np.asarray(Image.open(result_file.parent / entry["file"])) > 0
            scores[entry["label"]] = float(entry["score"])
        image = Path(info["image"]) if info.get("image") and Path(info["image"]).is_file() else None
        size = next(iter(masks.values())).shape if masks else None
        out[image_key(result_file.parent.name)] = Entry(masks, scores, image, size)
    return out


# ---------------------------------------------------------------------- scoring


@dataclass
class Evaluation:
    labels: list[str]
    scores: IoUAccumulator
    per_image: list[dict[str, Any]]  # image, label, iou, score (score only for present predictions)
    missing: list[str]  # truth images with no prediction

    def metrics(self) -> dict[str, Any]:
        iou, precision, recall = self.scores.per_label(), self.scores.precision(), self.scores.recall()
        per_label = {label: {"iou": iou.get(label, 1.0), "precision": precision.get(label, 1.0),
                             "recall": recall.get(label, 1.0),
                             "images": sum(1 for r in self.per_image if r["label"] == label and r["present"])}
                     for label in self.labels}
        return {"miou": float(np.mean([v["iou"] for v in per_label.values()])) if per_label else float("nan"),
                "mean_image_iou": self.scores.mean_image_iou, "per_label": per_label,
                "absent_false_positive_rate": self.scores.absent_false_positive_rate,
                "calibration": self.calibration(), "images": len({r["image"] for r in self.per_image}),
                "images_without_prediction": self.missing}

    def calibration(self) -> dict[str, Any]:
        """Spearman's rank correlation between a predicted region's score and its IoU with the
        truth, over the (image, label) pairs that got a mask."""
        from scipy.stats import spearmanr

        pairs = [(r["score"], r["iou"]) for r in self.per_image if r.get("score") is not None and r["predicted"]]
        if len(pairs) < 3:
            return {"pairs": len(pairs), "spearman": None}
        rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
        return {"pairs": len(pairs), "spearman": None if rho != rho else float(rho)}


def evaluate(truth: dict[str, Entry], pred: dict[str, Entry], labels: list[str] | None = None) -> Evaluation:
    """Score ``pred`` against ``truth`` on every truth image, every label."""
    labels = labels or sorted({label for entry in truth.values() for label in entry.masks})
    scores = IoUAccumulator()
    rows, missing = [], []
    for key, true in sorted(truth.items()):
        predicted = pred.get(key)
        if predicted is None:
            missing.append(key)
        for label in labels:
            t = true.masks.get(label)
            t = np.zeros(true.size, bool) if t is None else t
            p = predicted.masks.get(label) if predicted is not None else None
            p = np.zeros_like(t) if p is None else _fit(p, t.shape)
            value = scores.add(label, p, t)
            if value != value and p.any():  # a mask for a label the image lacks: as wrong as it gets
                value = 0.0
            rows.append({"image": key, "label": label, "iou": value, "present": bool(t.any()), "predicted": bool(p.any()),
                         "score": predicted.scores.get(label) if predicted is not None else None})
        scores.add_foreground([m for m in (predicted.masks.values() if predicted else [])], list(true.masks.values()) or [np.zeros(true.size, bool)])
    return Evaluation(labels, scores, rows, missing)


def _fit(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0


# ---------------------------------------------------------------------- report


def table(metrics: dict[str, Any]) -> str:
    lines = [f"{'label':<20} {'IoU':>6} {'prec':>6} {'recall':>6} {'images':>6}"]
    for label, row in metrics["per_label"].items():
        lines.append(f"{label[:20]:<20} {row['iou']:>6.3f} {row['precision']:>6.3f} {row['recall']:>6.3f} {row['images']:>6}")
    calibration = metrics["calibration"]
    rho = "n/a" if calibration["spearman"] is None else f"{calibration['spearman']:.3f}"
    lines.append(f"mIoU {metrics['miou']:.3f} (dataset-level), mean image IoU {metrics['mean_image_iou']:.3f}, "
                 f"{metrics['images']} images; Spearman(score, IoU) {rho} over {calibration['pairs']} regions")
    if metrics["images_without_prediction"]:
        lines.append(f"{len(metrics['images_without_prediction'])} truth images have no prediction (scored as empty)")
    return "\n".join(lines)


def write_report(evaluation: Evaluation, truth: dict[str, Entry], pred: dict[str, Entry], out: Path) -> dict[str, Any]:
    """metrics.json and index.html (per-label bars, score vs IoU scatter, the 12 worst images)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    metrics = evaluation.metrics()
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    figures = []
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(evaluation.labels) + 2), 3))
    labels = list(metrics["per_label"])
    ax.bar(labels, [metrics["per_label"][label]["iou"] for label in labels], color="tab:blue")
    ax.set_ylim(0, 1)
    ax.set_ylabel("IoU")
    ax.set_title(f"per-label IoU (mIoU {metrics['miou']:.3f})")
    ax.tick_params(axis="x", rotation=45)
    figures.append(("Per-label IoU", _png(fig)))
    pairs = [r for r in evaluation.per_image if r.get("score") is not None and r["predicted"]]
    if pairs:
        fig, ax = plt.subplots(figsize=(4.5, 3.5))
        ax.scatter([r["score"] for r in pairs], [r["iou"] for r in pairs], s=8, alpha=0.6)
        rho = metrics["calibration"]["spearman"]
        ax.set_title(f"score vs IoU, Spearman {'n/a' if rho is None else f'{rho:.3f}'}")
        ax.set_xlabel("predicted score")
        ax.set_ylabel("IoU (0 for a label the image lacks)")
        figures.append(("Score vs IoU", _png(fig)))
    worst = _worst_images(evaluation, 12)
    tiles = []
    for key in worst:
        tile = _overlay(truth[key], pred.get(key), evaluation.labels)
        if tile is not None:
            tiles.append((key, tile))
    body = "".join(f"<h2>{html.escape(title)}</h2><img src='data:image/png;base64,{data}'>" for title, data in figures)
    if tiles:
        body += "<h2>The 12 worst images (truth outlined in white, prediction filled)</h2>" + "".join(
            f"<figure style='display:inline-block;margin:4px'><img src='data:image/png;base64,{data}' width=256>"
            f"<figcaption>{html.escape(key)}</figcaption></figure>" for key, data in tiles)
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v['iou']:.3f}</td><td>{v['precision']:.3f}</td>"
                   f"<td>{v['recall']:.3f}</td><td>{v['images']}</td></tr>" for k, v in metrics["per_label"].items())
    (out / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><title>seediff eval</title><body style='font-family:sans-serif'>"
        f"<h1>seediff eval</h1><p>mIoU {metrics['miou']:.3f}, mean image IoU {metrics['mean_image_iou']:.3f}, "
        f"{metrics['images']} images</p><table border=1 cellpadding=4><tr><th>label</th><th>IoU</th><th>precision</th>"
        f"<th>recall</th><th>images with it</th></tr>{rows}</table>{body}</body>")
    return metrics


def _worst_images(evaluation: Evaluation, count: int) -> list[str]:
    per_image: dict[str, list[float]] = {}
    for row in evaluation.per_image:
        if row["present"] or row["predicted"]:
            per_image.setdefault(row["image"], []).append(0.0 if row["iou"] != row["iou"] else row["iou"])
    return sorted(per_image, key=lambda k: np.mean(per_image[k]))[:count]


def _overlay(true: Entry, pred: Entry | None, labels: list[str]) -> str | None:
    import cv2

    if true.image is None and (pred is None or pred.image is None):
        return None
    source = true.image or pred.image
    picture = np.asarray(Image.open(source).convert("RGB").resize((true.size[1], true.size[0])), dtype=np.float32)
    colours = np.array([[230, 25, 75], [60, 180, 75], [0, 130, 200], [255, 225, 25], [145, 30, 180], [70, 240, 240]],
                       np.float32)
    for k, label in enumerate(labels):
        if pred is not None and label in pred.masks:
            mask = _fit(pred.masks[label], true.size)
            picture[mask] = 0.5 * picture[mask] + 0.5 * colours[k % len(colours)]
    canvas = picture.astype(np.uint8)
    for label in labels:
        if label in true.masks:
            contours, _ = cv2.findContours(true.masks[label].astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(canvas, contours, -1, (255, 255, 255), 1)
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()
