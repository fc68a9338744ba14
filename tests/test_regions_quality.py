"""What an annotator sees, per object, on held-out shapes-world scenes through the backend's
controls: smooth polygons with few vertices, one region and one label per object, no fragments,
and a click that selects the object under it. Scenes come from the test seeds (never trained or
tuned on); every label of the project is asked on every image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from backend.controls import BrushLabelsControl, PolygonLabelsControl
from backend.rle import rle_to_mask
from seediff_core import Segmenter
from seediff_core.hints import Hints
from seediff_core.scenes import TEST_SEEDS, make_scene, render

LABELS = ["circle", "square", "triangle", "star"]
SCENES = 30


@pytest.fixture(scope="module")
def segmenter():
    return Segmenter.from_name("shapes-world", device="cpu")


def _polygon_mask(region: dict, height: int, width: int) -> np.ndarray:
    points = np.array(region["value"]["points"]) / 100 * [width, height]
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [np.round(points - 0.5).astype(np.int32)], 1)
    return mask > 0


def _render(seed: int, size: int):
    """A held-out scene at ``size`` px: rendered at 256 and enlarged (rendering supersamples, which
    at 1024 px costs seconds a scene; the model sees its own grid either way)."""
    rendered = render(make_scene(seed), 256)
    if size != 256:
        enlarge = lambda a, how: cv2.resize(a, (size, size), interpolation=how)  # noqa: E731
        rendered.image = enlarge(rendered.image, cv2.INTER_CUBIC)
        rendered.masks = [enlarge(m.astype(np.float32), cv2.INTER_LINEAR) >= 0.5 for m in rendered.masks]
    return rendered


def _per_object(segmenter, size: int, control_class, decode, **settings):
    """Per object of 30 held-out scenes: (regions mostly on it, labels covering it, its regions);
    and the number of regions lying mostly off every object."""
    control = control_class("tag", "image", LABELS)
    objects, off_object = [], 0
    for seed in TEST_SEEDS[200 : 200 + SCENES]:
        rendered = _render(seed, size)
        result = segmenter.segment(Image.fromarray(rendered.image), LABELS, **settings)
        regions = [(r, decode(r, size, size)) for item in result.masks
                   for r in control.regions(item.label, item.regions, size, size)]
        for truth in rendered.masks:
            if truth.sum() < 50:  # hidden under another object
                continue
            mine = [(r, m) for r, m in regions if (m & truth).sum() > 0.5 * m.sum()]
            labels = {r["value"][control.result_type][0] for r, m in regions if (m & truth).sum() > 0.05 * truth.sum()}
            objects.append((mine, labels, truth))
        off_object += sum(sum((m & truth).sum() for truth in rendered.masks) < 0.5 * m.sum() for _, m in regions)
    return objects, off_object


@pytest.mark.timeout(300)
def test_polygons_are_smooth_one_per_object_and_without_fragments(segmenter):
    """At 1024 px (8 pixels per cell of the model's grid, as for a photo under SD1.5) every object
    is one smooth polygon. Measured on these scenes: 17.9 vertices per polygon (main before this
    rule, tracing the upsampled mask's pixels: 67.3), 1.10 polygons per object (an object seen in
    two pieces behind another gives two), 0.02 polygons off every object per object, polygon IoU
    with its object 0.949 (before: 0.945)."""
    objects, off_object = _per_object(segmenter, 1024, PolygonLabelsControl, _polygon_mask)
    polygons = [r for mine, _, _ in objects for r, _ in mine]
    vertices = np.mean([len(r["value"]["points"]) for r in polygons])
    assert vertices <= 22, vertices
    assert np.mean([len(mine) for mine, _, _ in objects]) <= 1.15
    assert off_object / len(objects) <= 0.05, off_object
    fit = [max(((m & truth).sum() / (m | truth).sum() for _, m in mine), default=0.0) for mine, _, truth in objects]
    assert np.mean(fit) >= 0.9, np.round(fit, 2)


@pytest.mark.timeout(300)
def test_each_object_gets_one_label(segmenter):
    """Labels per object, not per pixel: measured 1.00 labels per object and no object split
    between labels (per pixel, label_per_object off: 1.88 labels per object, 32 of 52 objects
    split, and 4.2 brush regions per object)."""
    objects, _ = _per_object(segmenter, 256, BrushLabelsControl, lambda r, h, w: rle_to_mask(r["value"]["rle"], h, w) > 0)
    labels = [len(found) for _, found, _ in objects]
    assert np.mean(labels) <= 1.05 and sum(n > 1 for n in labels) <= 2, labels
    assert np.mean([len(mine) for mine, _, _ in objects]) <= 1.15


@pytest.mark.timeout(300)
def test_a_click_returns_the_object_under_it(segmenter):
    """A positive click at the largest object of 30 held-out scenes with several objects, its label
    asked alone (as Label Studio's smart keypoint asks): the mask lies on that object. Measured:
    precision 0.975 (fraction of the mask on the clicked object), recall 0.965, 2 of 30 masks
    reaching another object (both touch the clicked one). Before (main): precision 0.668, 24 of 30."""
    precision, recall, others = [], [], 0
    scenes = (render(make_scene(seed), 256) for seed in TEST_SEEDS[300:])
    for rendered in (r for r in scenes if len(r.scene.objects) >= 2):
        index = int(np.argmax([m.sum() for m in rendered.masks]))
        truth, label = rendered.masks[index], rendered.scene.objects[index].shape
        distance = cv2.distanceTransform(truth.astype(np.uint8), cv2.DIST_L2, 5)
        y, x = np.unravel_index(distance.argmax(), distance.shape)
        result = segmenter.segment(Image.fromarray(rendered.image), [label],
                                   hints={label: Hints(positive=(((x + 0.5) / 256, (y + 0.5) / 256),))})
        mask = result[label].mask > 0
        precision.append((mask & truth).sum() / max(mask.sum(), 1))
        recall.append((mask & truth).sum() / truth.sum())
        others += any((mask & other).sum() > 0.2 * other.sum() for k, other in enumerate(rendered.masks) if k != index)
        if len(precision) == SCENES:
            break
    assert np.mean(precision) >= 0.95 and np.mean(recall) >= 0.9, (np.round(precision, 2), np.round(recall, 2))
    assert others <= 3, others


_PER_PIXEL: dict[int, tuple] = {}


def _per_pixel(segmenter, seed: int):
    """(rendered scene, result with label_per_object off) of a held-out scene, computed once for
    the two tests below (the first reads ten of the second's sixty scenes)."""
    if seed not in _PER_PIXEL:
        rendered = render(make_scene(seed), 256)
        _PER_PIXEL[seed] = rendered, segmenter.segment(Image.fromarray(rendered.image), LABELS, label_per_object=False)
    return _PER_PIXEL[seed]


@pytest.mark.timeout(300)
def test_no_region_is_a_fragment_or_a_sliver(segmenter):
    """Per-pixel labels (label_per_object off) leave scraps of labels on other objects; whatever the
    method leaves, no region reaches the annotator below the minimum area or width."""
    config = segmenter.config_for(label_per_object=False)
    for seed in TEST_SEEDS[200:210]:
        _, result = _per_pixel(segmenter, seed)
        for item in result.masks:
            for region in item.regions:
                assert region.area >= config.min_region_area * 256 * 256 * 0.8, (seed, item.label, region.box)
                distance = cv2.distanceTransform(np.pad(region.mask, 1), cv2.DIST_L2, 5)
                grid = segmenter.model.native_size  # the model's working grid, in cells across
                widest_cells = 2 * distance.max() / (256 / grid)
                assert widest_cells >= config.min_region_width * grid - 1, (seed, item.label, region.box)


@pytest.mark.timeout(300)
def test_each_region_is_scored_alone(segmenter):
    """Regions of one label get their own scores, which rank them: on 60 held-out scenes with
    per-pixel labels (label_per_object off, which leaves a label on parts of other objects), a
    region lying on an object of its label scores above an off-label region of the same label in
    31 of 32 such pairs (0.97; repeating the label's score on every region, as before: 0.5)."""
    pairs = wins = 0
    for seed in TEST_SEEDS[200:260]:
        rendered, result = _per_pixel(segmenter, seed)
        for item in result.masks:
            truth = rendered.label_mask(item.label)
            on_label = [((r.full_mask(256, 256) > 0) & truth).sum() / r.area > 0.5 for r in item.regions]
            for good, a in zip(on_label, item.regions):
                for bad, b in zip(on_label, item.regions):
                    if good and not bad:
                        pairs += 1
                        wins += a.score > b.score
    assert pairs >= 20 and wins / pairs >= 0.9, (wins, pairs)
