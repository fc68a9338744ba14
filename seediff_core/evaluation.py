"""Scoring masks against ground truth: IoU per label, accumulated over a set of images."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    """IoU of two (H, W) masks (any nonzero is inside); 1.0 when both are empty."""
    p, t = np.asarray(prediction) > 0, np.asarray(truth) > 0
    union = np.count_nonzero(p | t)
    return 1.0 if union == 0 else np.count_nonzero(p & t) / union


@dataclass
class IoUAccumulator:
    """Dataset-level IoU per label: sum of intersections / sum of unions over every image where the
    label was asked for, so a mask given to a label absent from the image counts against it (its
    pixels join the union), as in standard semantic-segmentation mIoU. Also the mean of per-image
    IoUs where the label is present, how often absent labels still got a mask, and the foreground
    IoU (union of all masks against union of all objects, labels ignored), which separates finding
    the objects from naming them."""

    intersection: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    union: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    per_image: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    predicted: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # predicted pixels per label
    truth: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # true pixels per label
    absent_masks: list[float] = field(default_factory=list)  # area fraction of each absent label's mask
    foreground_intersection: int = 0
    foreground_union: int = 0

    def add(self, label: str, prediction: np.ndarray, truth: np.ndarray) -> float:
        p, t = np.asarray(prediction) > 0, np.asarray(truth) > 0
        self.predicted[label] += int(np.count_nonzero(p))
        self.truth[label] += int(np.count_nonzero(t))
        if not t.any():
            self.absent_masks.append(float(p.mean()))
            self.union[label] += int(np.count_nonzero(p))
            self.intersection[label] += 0
            return float("nan")
        inter, uni = int(np.count_nonzero(p & t)), int(np.count_nonzero(p | t))
        self.intersection[label] += inter
        self.union[label] += uni
        value = inter / uni
        self.per_image[label].append(value)
        return value

    def add_foreground(self, predictions: list[np.ndarray], objects: list[np.ndarray]) -> None:
        """One image's masks (any labels) and its objects' masks, each (H, W)."""
        p = np.any([np.asarray(m) > 0 for m in predictions], axis=0) if predictions else False
        t = np.any([np.asarray(m) > 0 for m in objects], axis=0)
        self.foreground_intersection += int(np.count_nonzero(p & t))
        self.foreground_union += int(np.count_nonzero(p | t))

    @property
    def foreground_iou(self) -> float:
        return self.foreground_intersection / self.foreground_union if self.foreground_union else float("nan")

    def precision(self) -> dict[str, float]:
        """Per label: share of its predicted pixels that are truly its own (1.0 if it predicted none)."""
        return {k: self.intersection[k] / self.predicted[k] if self.predicted[k] else 1.0 for k in sorted(self.union)}

    def recall(self) -> dict[str, float]:
        """Per label: share of its true pixels it predicted (1.0 if the truth has none)."""
        return {k: self.intersection[k] / self.truth[k] if self.truth[k] else 1.0 for k in sorted(self.union)}

    def per_label(self) -> dict[str, float]:
        return {k: self.intersection[k] / self.union[k] for k in sorted(self.union) if self.union[k]}

    @property
    def miou(self) -> float:
        """Mean over labels of the dataset-level IoU."""
        values = list(self.per_label().values())
        return float(np.mean(values)) if values else float("nan")

    @property
    def mean_image_iou(self) -> float:
        values = [v for vs in self.per_image.values() for v in vs]
        return float(np.mean(values)) if values else float("nan")

    @property
    def absent_false_positive_rate(self) -> float:
        """Fraction of absent labels that still got a non-empty mask."""
        return float(np.mean([a > 0 for a in self.absent_masks])) if self.absent_masks else float("nan")


LABEL_VARIANTS = ("shapes", "colour-shapes", "all-shapes")


def scene_labels(scene, variant: str) -> list[str]:
    """The labels asked for a shapes-world scene: the shapes present ("shapes"), the "colour shape"
    names present ("colour-shapes"), or all four shapes whether present or not ("all-shapes", as a
    Label Studio project's label list would be)."""
    from .scenes import SHAPES

    if variant == "shapes":
        return sorted({o.shape for o in scene.objects})
    if variant == "colour-shapes":
        return sorted({o.name for o in scene.objects})
    if variant == "all-shapes":
        return list(SHAPES)
    raise ValueError(f"unknown label variant {variant!r}; expected one of {LABEL_VARIANTS}")


def evaluate_scenes(segmenter, seeds, size: int = 256, variant: str = "shapes", patterned: bool = True,
                    touching: bool = False, **settings) -> IoUAccumulator:
    """Segment rendered shapes-world scenes (patterned or flat-coloured; objects mostly apart, or all
    touching) through the real path and accumulate IoU against their exact masks. ``settings``
    override the segmenter's config (e.g. ``method="crossattn"``)."""
    from PIL import Image

    from .scenes import make_scene, render

    scores = IoUAccumulator()
    for seed in seeds:
        rendered = render(make_scene(int(seed), patterned=patterned, touching=touching), size)
        labels = scene_labels(rendered.scene, variant)
        result = segmenter.segment(Image.fromarray(rendered.image), labels, **settings)
        for item in result.masks:
            scores.add(item.label, item.mask, rendered.label_mask(item.label))
        scores.add_foreground([item.mask for item in result.masks], rendered.masks)
    return scores


@dataclass
class HungarianAccumulator:
    """DiffSeg's protocol for unlabelled segments: per image, segments are matched one-to-one to the
    ground-truth classes present (Hungarian, maximising IoU); TP/FP/FN accumulate per class over the
    set; unmatched segments are not counted. mIoU = mean over classes of TP / (TP + FP + FN)."""

    tp: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fp: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fn: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, segments: list[np.ndarray], truth: dict[str, np.ndarray]) -> None:
        from scipy.optimize import linear_sum_assignment

        names = list(truth)
        if not names:
            return
        gt = [np.asarray(truth[n]) > 0 for n in names]
        seg = [np.asarray(s) > 0 for s in segments]
        scores = np.array([[iou(s, g) for s in seg] for g in gt]) if seg else np.zeros((len(gt), 0))
        rows, cols = linear_sum_assignment(-scores) if seg else ([], [])
        matched = dict(zip(rows, cols))
        for i, name in enumerate(names):
            if i in matched:
                s = seg[matched[i]]
                self.tp[name] += int(np.count_nonzero(s & gt[i]))
                self.fp[name] += int(np.count_nonzero(s & ~gt[i]))
                self.fn[name] += int(np.count_nonzero(~s & gt[i]))
            else:
                self.fn[name] += int(np.count_nonzero(gt[i]))

    def per_class(self) -> dict[str, float]:
        return {k: self.tp[k] / max(self.tp[k] + self.fp[k] + self.fn[k], 1) for k in sorted(set(self.tp) | set(self.fn))}

    @property
    def miou(self) -> float:
        values = list(self.per_class().values())
        return float(np.mean(values)) if values else float("nan")


def evaluate_segments(segmenter, seeds, size: int = 256, patterned: bool = True, touching: bool = False,
                      **settings) -> HungarianAccumulator:
    """DiffSeg's unlabelled segments of shapes-world scenes, scored by per-image Hungarian matching
    against the classes present (background and each shape)."""
    from PIL import Image

    from .scenes import make_scene, render

    scores = HungarianAccumulator()
    for seed in seeds:
        rendered = render(make_scene(int(seed), patterned=patterned, touching=touching), size)
        result = segmenter.segment_everything(Image.fromarray(rendered.image), **settings)
        truth = {shape: rendered.label_mask(shape) for shape in {o.shape for o in rendered.scene.objects}}
        truth["background"] = ~np.any(np.stack(list(truth.values())), axis=0)
        scores.add([m.mask for m in result.masks], truth)
    return scores
