"""Annotator hints for one label: clicks inside (positive) or outside (negative) the object, and boxes.

Coordinates are fractions of the image, x to the right and y down, 0..1: the original
(EXIF-corrected) frame when given to ``Segmenter.segment``, the working grid inside a method.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Point = tuple[float, float]
Box = tuple[float, float, float, float]  # x0, y0, x1, y1


@dataclass(frozen=True)
class Hints:
    positive: tuple[Point, ...] = ()
    negative: tuple[Point, ...] = ()
    boxes: tuple[Box, ...] = ()

    def __post_init__(self) -> None:
        for x, y in (*self.positive, *self.negative):
            if not (0 <= x <= 1 and 0 <= y <= 1):
                raise ValueError(f"hint point ({x}, {y}) is outside the image; use fractions 0..1")
        for x0, y0, x1, y1 in self.boxes:
            if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
                raise ValueError(f"hint box ({x0}, {y0}, {x1}, {y1}) must satisfy 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1")

    def __bool__(self) -> bool:
        return bool(self.positive or self.negative or self.boxes)

    def mapped(self, scale_x: float, scale_y: float) -> "Hints":
        """The same hints in a frame whose x and y are scaled (original -> working grid)."""
        return Hints(
            tuple((x * scale_x, y * scale_y) for x, y in self.positive),
            tuple((x * scale_x, y * scale_y) for x, y in self.negative),
            tuple((x0 * scale_x, y0 * scale_y, x1 * scale_x, y1 * scale_y) for x0, y0, x1, y1 in self.boxes),
        )


def point_mask(points: tuple[Point, ...], size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(h, w) bool on ``device`` with the cell under each point set."""
    h, w = size
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    for x, y in points:
        mask[min(int(y * h), h - 1), min(int(x * w), w - 1)] = True
    return mask


def box_mask(boxes: tuple[Box, ...], size: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
    """(h, w) bool on ``device``: cells whose centre lies in any box; all True when there is no box."""
    h, w = size
    if not boxes:
        return torch.ones(h, w, dtype=torch.bool, device=device)
    ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
    mask = torch.zeros(h, w, dtype=torch.bool, device=device)
    for x0, y0, x1, y1 in boxes:
        # A box thinner than a cell still keeps the cell it falls in.
        inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
        if not inside.any():
            inside = point_mask((((x0 + x1) / 2, (y0 + y1) / 2),), size, device)
        mask |= inside
    return mask
