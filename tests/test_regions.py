"""Regions: a label's mask split into the objects an annotator edits, on hand-made grids."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from seediff_core.regions import clicked_objects, outline, regions_of, split_objects


def _disk(size: int, cx: float, cy: float, radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    return (xs - cx) ** 2 + (ys - cy) ** 2 <= radius**2


def _filled(polygons: list[np.ndarray], height: int, width: int, scale: int = 8) -> np.ndarray:
    """Polygons in continuous coordinates rasterised at ``scale`` times the resolution, pooled back."""
    canvas = np.zeros((height * scale, width * scale), np.uint8)
    for polygon in polygons:
        cv2.fillPoly(canvas, [np.round(polygon * scale - 0.5).astype(np.int32)], 1)
    return cv2.resize(canvas.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA) >= 0.5


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_fragments_are_dropped_and_objects_come_largest_first():
    mask = _disk(64, 20, 20, 12) | _disk(64, 48, 48, 6)
    mask[60:62, 2:4] = True  # a 4-cell fragment
    parts = split_objects(torch.from_numpy(mask), min_area=10, min_width=0)
    assert [int(p.sum()) for p in parts] == sorted((int(p.sum()) for p in parts), reverse=True)
    assert len(parts) == 2 and not any(p[60, 2] for p in parts)
    assert len(split_objects(torch.from_numpy(mask), min_area=0, min_width=0)) == 3


def test_small_holes_are_filled_and_large_holes_kept():
    mask = _disk(64, 32, 32, 25)
    mask[30:32, 30:32] = False  # a pinhole of 4 cells
    mask |= False
    ring = _disk(64, 32, 32, 25) & ~_disk(64, 32, 32, 10)
    (pinhole,) = split_objects(torch.from_numpy(mask), min_area=10, min_width=0)
    assert pinhole[30, 30]
    (kept,) = split_objects(torch.from_numpy(ring), min_area=10, min_width=0)
    assert not kept[32, 32] and int(kept.sum()) == int(ring.sum())


def test_slivers_along_an_edge_are_dropped():
    square = np.zeros((64, 64), bool)
    square[10:40, 10:40] = True
    strip = np.zeros_like(square)
    strip[10:43, 41:43] = True  # two cells wide, a cell from the square's right edge
    strip[41:43, 10:43] = True  # ... and under it: an L
    parts = split_objects(torch.from_numpy(square | strip), min_area=10, min_width=4)
    assert len(parts) == 1 and np.array_equal(parts[0].numpy(), square)
    assert len(split_objects(torch.from_numpy(square | strip), min_area=10, min_width=0)) == 2


def test_a_click_keeps_the_object_under_it_or_the_nearest():
    mask = _disk(64, 16, 16, 8) | _disk(64, 48, 48, 8)
    parts = split_objects(torch.from_numpy(mask), 1, 0)
    (hit,) = clicked_objects(parts, ((48 / 64, 48 / 64),))
    assert hit[48, 48] and not hit[16, 16]
    (near,) = clicked_objects(parts, ((26 / 64, 16 / 64),))  # just off the first disk's edge
    assert near[16, 16]
    assert clicked_objects(parts, ((60 / 64, 4 / 64),)) == []  # far from both: neither is "this object"
    assert len(clicked_objects(parts, ((16 / 64, 16 / 64), (48 / 64, 48 / 64)))) == 2
    assert len(clicked_objects(parts, ())) == 2


def test_empty_input():
    empty = torch.zeros(16, 16, dtype=torch.bool)
    assert split_objects(empty, 1, 1) == [] and clicked_objects([], ((0.5, 0.5),)) == []
    assert outline(np.zeros((16, 16), bool), (1.0, 1.0), 0.01) == [] and regions_of(np.zeros((4, 4)), 0.5) == []


def _largest_turn(polygon: np.ndarray) -> float:
    """The largest change of direction between consecutive edges, in degrees."""
    edges = np.diff(np.vstack([polygon, polygon[:1]]), axis=0)
    angles = np.arctan2(edges[:, 1], edges[:, 0])
    turns = (np.diff(np.concatenate([angles, angles[:1]])) + np.pi) % (2 * np.pi) - np.pi
    return float(np.degrees(np.abs(turns).max()))


@pytest.mark.parametrize("scale", [1, 8])
def test_a_circle_outline_is_smooth_and_has_few_vertices(scale):
    """A disk of radius 20 on the grid, drawn at the grid's size or 8x larger (a photo's pixels per
    cell): the polygon follows the circle, not the grid's steps. Tracing the upsampled mask's pixels
    (main before regions) gave 56 vertices at 8x, turns of up to 49 degrees and 0.55 cells of error;
    this gives 20, 21 degrees and 0.09."""
    disk = _disk(64, 32.0, 32.0, 20.0)
    (polygon,) = outline(disk, (scale, scale), 0.015)
    radii = np.hypot(*(polygon / scale - 32.0).T)
    assert 12 <= len(polygon) <= 24, len(polygon)
    assert np.abs(radii - 20.0).max() < 0.3, radii
    assert _largest_turn(polygon) < 30


def test_a_square_keeps_its_corners_and_touching_the_border_still_closes():
    square = np.zeros((64, 64), bool)
    square[0:40, 20:60] = True  # touches the top edge
    (polygon,) = outline(square, (2.0, 2.0), 0.015)
    assert len(polygon) == 4, polygon
    assert _iou(_filled([polygon], 128, 128), np.kron(square, np.ones((2, 2), bool))) > 0.99
    assert polygon[:, 1].min() >= 0 and polygon[:, 1].min() < 2  # runs along the edge, inside the image


def test_tolerance_is_relative_to_the_object_size():
    big, small = _disk(256, 128, 128, 100), _disk(256, 128, 128, 25)
    (a,), (b,) = outline(big, (1.0, 1.0), 0.015), outline(small, (1.0, 1.0), 0.015)
    assert abs(len(a) - len(b)) <= 0.35 * len(a), (len(a), len(b))  # the same shape, a similar count
    (coarse,) = outline(big, (1.0, 1.0), 0.06)
    assert len(coarse) < 0.6 * len(a)
