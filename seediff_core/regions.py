"""From a label's mask to its regions: the separate objects an annotator reviews one by one.

Everything here runs on the working grid, where the masks' information lives; the pipeline maps
the result to the original frame. Sizes are in grid cells unless a name says otherwise.

- ``split_objects``: the connected parts of a mask, without fragments (smaller than a minimum
  area), slivers (no wider anywhere than a minimum width, such as a strip along another object's
  edge) and pinholes (holes below the minimum area are filled; larger holes stay).
- ``clicked_objects``: a positive click means "this object": only the parts under the clicks stay.
- ``outline``: sub-pixel smooth outer boundaries of a part, simplified relative to its size, for
  polygon output.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from .results import Region

# Smoothing of a part before its outline is traced, in grid cells: enough to round the grid's
# steps into curves, little enough to keep a square's corners within about a cell.
OUTLINE_SIGMA = 0.8
OUTLINE_SUPERSAMPLE = 4


def split_objects(mask: torch.Tensor, min_area: float, min_width: float) -> list[torch.Tensor]:
    """The objects of one label's mask, largest first.

    Args:
        mask (`torch.Tensor`): (h, w) bool on the working grid, on the CPU (the pipeline hands the
            method's masks over once, before this stage).
        min_area (`float`): parts with fewer cells are fragments and dropped; holes with fewer
            cells are filled.
        min_width (`float`): parts whose widest point (twice the largest distance from a cell to the
            part's edge) is narrower than this many cells are slivers and dropped.

    Returns:
        list of (h, w) bool, disjoint, 8-connected each.
    """
    if not mask.any():
        return []
    cells = fill_small_holes(mask.numpy().astype(np.uint8), min_area)
    count, components, stats, _ = cv2.connectedComponentsWithStats(cells, connectivity=8)
    # Distance to the nearest cell outside the mask, the grid's border counting as outside.
    distance = cv2.distanceTransform(np.pad(cells, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    out = []
    for index in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        if stats[index, cv2.CC_STAT_AREA] < min_area:
            continue
        part = components == index
        # distanceTransform counts the cell itself: a 1-cell-wide line has distance 1, width 1.
        if 2 * float(distance[part].max()) - 1 < min_width:
            continue
        out.append(torch.from_numpy(part))
    return out


def fill_small_holes(cells: np.ndarray, min_area: float) -> np.ndarray:
    """(h, w) uint8 0/1 -> the same with holes (background parts not touching the border) of
    fewer than ``min_area`` cells filled."""
    background = np.pad(1 - cells, 1, constant_values=1)
    count, components, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    small = np.zeros(count, dtype=bool)
    small[1:] = stats[1:, cv2.CC_STAT_AREA] < min_area
    small[components[0, 0]] = False  # the outside, reached through the padding
    return np.where(small[components][1:-1, 1:-1], 1, cells).astype(np.uint8)


def clicked_objects(objects: list[torch.Tensor], points: tuple[tuple[float, float], ...],
                    reach: float = 0.05) -> list[torch.Tensor]:
    """The objects under positive clicks: those containing a click, else for each click the
    object nearest to it if it lies within ``reach`` (a fraction of the grid's long side: a click
    just off the mask's edge still means that object, a click far from every object means none).

    Args:
        objects (`list[torch.Tensor]`): (h, w) bool each, from ``split_objects``.
        points: clicks as (x, y) fractions of the grid.

    Returns:
        the chosen objects, in their order; all of them when there are no clicks.
    """
    if not points or not objects:
        return objects
    h, w = objects[0].shape
    chosen: set[int] = set()
    for x, y in points:
        row, col = min(int(y * h), h - 1), min(int(x * w), w - 1)
        hit = [i for i, part in enumerate(objects) if part[row, col]]
        if hit:
            chosen.update(hit)
            continue
        distances = []
        for part in objects:
            rows, cols = torch.nonzero(part, as_tuple=True)
            distances.append(float(((rows - row) ** 2 + (cols - col) ** 2).min().sqrt()))
        if min(distances) <= reach * max(h, w):
            chosen.add(int(np.argmin(distances)))
    return [part for i, part in enumerate(objects) if i in chosen]


def outline(part: np.ndarray, scale: tuple[float, float], tolerance: float) -> list[np.ndarray]:
    """Smooth outer boundaries of one object, as polygons.

    The part is blurred by ``OUTLINE_SIGMA`` cells and its 0.5 level traced on a grid
    ``OUTLINE_SUPERSAMPLE`` times finer, so the outline follows the object's shape rather than the
    grid's steps; it is then simplified to within ``tolerance`` times the object's size (the square
    root of its area).

    Args:
        part (`np.ndarray`): (h, w) bool, one object on the working grid (its content, no padding).
        scale (`tuple[float, float]`): (sx, sy), original pixels per grid cell.
        tolerance (`float`): largest distance from the smooth boundary to the polygon, relative to
            the object's size.

    Returns:
        list of (N, 2) float64 arrays of (x, y) in the original frame's continuous coordinates (the
        image spans [0, W] x [0, H]), N >= 3, largest first; empty for an empty part.
    """
    rows, cols = np.nonzero(part)
    if rows.size == 0:
        return []
    margin = int(np.ceil(3 * OUTLINE_SIGMA)) + 1
    top, left = max(rows.min() - margin, 0), max(cols.min() - margin, 0)
    bottom, right = min(rows.max() + margin + 1, part.shape[0]), min(cols.max() + margin + 1, part.shape[1])
    # Pad with background so an object touching the image's edge is closed along it.
    crop = np.pad(part[top:bottom, left:right].astype(np.float32), margin)
    soft = cv2.GaussianBlur(crop, (0, 0), OUTLINE_SIGMA, borderType=cv2.BORDER_CONSTANT)
    fine = cv2.resize(soft, None, fx=OUTLINE_SUPERSAMPLE, fy=OUTLINE_SUPERSAMPLE, interpolation=cv2.INTER_LINEAR)
    contours, _ = cv2.findContours((fine >= 0.5).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    size = np.sqrt(rows.size) * OUTLINE_SUPERSAMPLE
    polygons = []
    for contour in sorted(contours, key=cv2.contourArea, reverse=True):
        kept = cv2.approxPolyDP(contour, max(tolerance * size, 0.5), True)[:, 0, :]
        if len(kept) < 3:
            continue
        # Fine pixel p's centre is (p + 0.5) / S cells into the padded crop.
        dense = _onto_level(soft, (contour[:, 0, :] + 0.5) / OUTLINE_SUPERSAMPLE)
        order = np.flatnonzero((contour[:, 0, None, :] == kept[None]).all(axis=2).any(axis=1))
        cells = np.clip(_corners(dense, order) - margin + [left, top], 0, [part.shape[1], part.shape[0]])
        polygons.append(cells * scale)
    return polygons


def _corners(dense: np.ndarray, order: np.ndarray, reach: float = 1.0) -> np.ndarray:
    """Vertices of a simplified closed outline: each kept point (``order``, indices into the (M, 2)
    ``dense`` outline) moves to where the lines fitted to its two edges meet, when they meet within
    ``reach`` cells; the blur rounds corners, and the edges' lines find them again."""
    lines = []
    for start, end in zip(order, np.roll(order, -1)):
        span = dense[start : end + 1] if end > start else np.vstack([dense[start:], dense[: end + 1]])
        centre = span.mean(axis=0)
        direction = np.linalg.svd(span - centre, full_matrices=False)[2][0]
        lines.append((centre, direction))
    vertices = dense[order].copy()
    for i in range(len(order)):
        (p, d), (q, e) = lines[i - 1], lines[i]
        cross = d[0] * e[1] - d[1] * e[0]
        if abs(cross) < 0.2:  # nearly parallel edges: the point itself is the corner
            continue
        t = ((q - p)[0] * e[1] - (q - p)[1] * e[0]) / cross
        meet = p + t * d
        if np.hypot(*(meet - vertices[i])) <= reach:
            vertices[i] = meet
    return vertices


def _onto_level(soft: np.ndarray, points: np.ndarray, level: float = 0.5, steps: int = 3) -> np.ndarray:
    """Move (N, 2) (x, y) points, in continuous cell coordinates of ``soft``, along its gradient onto
    its ``level`` line: traced pixel centres sit up to half a fine pixel inside it."""
    grad_y, grad_x = np.gradient(soft)
    maps = np.stack([soft, grad_x, grad_y]).astype(np.float32)
    for _ in range(steps):
        # cv2.remap samples at pixel-index coordinates: cell centre (i + 0.5) is index i.
        sample = [cv2.remap(m, (points[:, 0] - 0.5).astype(np.float32)[:, None],
                            (points[:, 1] - 0.5).astype(np.float32)[:, None], cv2.INTER_LINEAR)[:, 0] for m in maps]
        value, gx, gy = sample
        norm = gx**2 + gy**2
        step = np.where(norm > 1e-6, (value - level) / np.maximum(norm, 1e-6), 0.0)
        move = np.clip(step[:, None] * np.stack([gx, gy], 1), -0.5, 0.5)  # at most half a cell per step
        points = points - move
    return points


def regions_of(mask: np.ndarray, score: float, tolerance: float = 0.01) -> list[Region]:
    """The objects of a mask made elsewhere (a synthetic dataset's, an import's), each a Region
    with ``score``: 8-connected parts of the (H, W) mask (nonzero = inside), traced at full size."""
    count, components, stats, _ = cv2.connectedComponentsWithStats((mask > 0).astype(np.uint8), connectivity=8)
    out = []
    for index in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        part = components == index
        out.append(Region.from_mask(part, score, outline(part, (1.0, 1.0), tolerance)))
    return out
