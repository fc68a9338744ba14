"""What a segmentation returns: per label a mask at the original size, a score and a soft map."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Region:
    """One object of a label: a connected part of its mask, scored alone.

    Attributes:
        box (`tuple[int, int, int, int]`): (x0, y0, x1, y1) pixel bounds in the original frame,
            x1 and y1 exclusive.
        mask (`np.ndarray`): (y1 - y0, x1 - x0) uint8, 255 inside, 0 outside: the crop of the
            original frame under ``box`` (holes kept).
        score (`float`): in [0, 1], the method's score of this object alone (as if it were the
            label's whole mask).
        outline (`list[np.ndarray]`): (N, 2) float (x, y) polygons in the original frame's
            continuous coordinates (the image spans [0, W] x [0, H]): the object's smooth outer
            boundary, simplified relative to its size; holes are not traced.
    """

    box: tuple[int, int, int, int]
    mask: np.ndarray
    score: float
    outline: list[np.ndarray] = field(default_factory=list)

    @classmethod
    def from_mask(cls, mask: np.ndarray, score: float, outline: list[np.ndarray] | None = None) -> "Region | None":
        """The region of an (H, W) mask in the original frame (nonzero inside), cropped to its
        bounds; None when the mask is empty."""
        rows, cols = np.nonzero(mask)
        if rows.size == 0:
            return None
        x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
        return cls((x0, y0, x1, y1), (mask[y0:y1, x0:x1] > 0).astype(np.uint8) * 255, score, list(outline or []))

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def full_mask(self, height: int, width: int) -> np.ndarray:
        """(height, width) uint8 0/255: the region in the whole original frame."""
        out = np.zeros((height, width), dtype=np.uint8)
        x0, y0, x1, y1 = self.box
        out[y0:y1, x0:x1] = self.mask
        return out


@dataclass
class LabelMask:
    """One label's result.

    Attributes:
        label (`str`): the label as given.
        mask (`np.ndarray`): (H, W) uint8, 255 inside, 0 outside, in the original (EXIF-corrected) frame.
        score (`float`): in [0, 1]; the method's docstring defines it (SeeDiff: contrast of the
            expanded attention between the mask and the rest of the image). 0 for an empty mask.
        soft (`np.ndarray`): (h, w) float32 in [0, 1], the method's confidence map on the working
            grid, cropped to the image (same aspect ratio as the original, smaller).
        regions (`list[Region]`): the mask's separate objects, largest first; their union is ``mask``.
    """

    label: str
    mask: np.ndarray
    score: float
    soft: np.ndarray
    regions: list[Region] = field(default_factory=list)

    @property
    def area(self) -> int:
        """Pixels inside the mask."""
        return int(np.count_nonzero(self.mask))


@dataclass
class SegmentationResult:
    """Masks for every requested label of one image, in the labels' order, plus how they were made."""

    masks: list[LabelMask]
    width: int
    height: int
    method: str
    model: str
    settings: dict[str, Any]
    prompts: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [m.label for m in self.masks]

    def __getitem__(self, label: str) -> LabelMask:
        for mask in self.masks:
            if mask.label == label:
                return mask
        raise KeyError(f"no label {label!r}; labels: {self.labels}")

    @property
    def score(self) -> float:
        """Image-level score: the mean of the scores of the labels that got a mask (0 if none did).
        Sorting images by it, lowest first, puts the least certain pre-labels first for review."""
        scores = [m.score for m in self.masks if m.area > 0]
        return float(np.mean(scores)) if scores else 0.0

    def to_json(self) -> dict[str, Any]:
        """Everything except the arrays, JSON-serialisable."""
        return {
            "width": self.width,
            "height": self.height,
            "method": self.method,
            "model": self.model,
            "score": round(self.score, 6),
            "labels": [{"label": m.label, "score": round(m.score, 6), "area": m.area,
                        "regions": [{"box": list(r.box), "score": round(r.score, 6), "area": r.area} for r in m.regions]}
                       for m in self.masks],
            "prompts": self.prompts,
            "settings": self.settings,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }
