"""DiffSeg, DiffuMask, T2M and the cross-attention baseline on hand-built attention whose answer is
known; the unsupervised mode, heat maps and synthetic datasets through the real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seediff_core import Segmenter
from seediff_core.config import SeediffConfig
from seediff_core.maps import AttentionMaps
from seediff_core.methods import METHODS, get_method
from seediff_core.methods.diffseg import anchor_indices, merge, symmetric_kl
from seediff_core.scenes import make_scene, render
from seediff_core.synth import Synthesizer, coco_rle, write_dataset
from test_seediff import _hand_built_maps, _iou



@pytest.mark.parametrize("method", ["diffumask", "t2m", "seediff"])
def test_methods_recover_known_regions(method):
    maps, truth = _hand_built_maps()
    out = get_method(method).segment(maps, SeediffConfig())
    assert out.masks.shape == (2, *truth.shape) and not (out.masks[0] & out.masks[1]).any()
    assert _iou(out.masks[0].numpy(), truth == 1) >= 0.95
    assert _iou(out.masks[1].numpy(), truth == 2) >= 0.95
    assert ((out.scores >= 0) & (out.scores <= 1)).all() and out.soft.min() >= 0 and out.soft.max() <= 1


def test_the_raw_cross_attention_baseline_is_what_the_methods_beat():
    maps, truth = _hand_built_maps()
    out = get_method("crossattn").segment(maps, SeediffConfig())
    baseline = np.mean([_iou(out.masks[0].numpy(), truth == 1), _iou(out.masks[1].numpy(), truth == 2)])
    assert 0.2 < baseline < 0.8  # the coarse blob alone: right place, wrong extent


def _quadrant_maps():
    """Four equal quadrants, attention uniform inside each; labels' cross-attention in three of them."""
    latent, image = 32, 128

    def quadrants(n):
        ys, xs = np.mgrid[0:n, 0:n]
        return (ys >= n // 2) * 2 + (xs >= n // 2)

    self_attention = {}
    for factor in (8, 4, 2, 1):
        seg = quadrants(latent // factor).reshape(-1)
        same = (seg[:, None] == seg[None, :]).astype(np.float64) + 1e-3
        self_attention[factor] = torch.from_numpy(same / same.sum(1, keepdims=True)).float()[None]
    rng = np.random.default_rng(0)
    cross = {}
    for factor in (4, 2):
        seg = quadrants(latent // factor)
        cross[factor] = torch.from_numpy(np.stack([
            np.stack([(seg == q) * 1.0 + 0.1 * rng.random(seg.shape) for q in (0, 1, 3)]) for _ in range(2)
        ])).float() / 77
    truth = quadrants(image)
    rgb = torch.from_numpy(np.array([[0.8, 0.2, 0.2], [0.2, 0.8, 0.2], [0.5, 0.5, 0.5], [0.2, 0.2, 0.8]])[truth])
    maps = AttentionMaps(["a", "b", "d"], (latent, latent), (0.0, 0.0, 1.0, 1.0), rgb.permute(2, 0, 1).float(),
                         cross, {f: ["x", "y"] for f in cross}, self_attention, {f: ["s"] for f in self_attention})
    return maps, truth


def test_diffseg_merges_into_the_true_segments_and_votes_their_labels():
    maps, truth = _quadrant_maps()
    out = get_method("diffseg").segment(maps, SeediffConfig())
    for k, quadrant in enumerate((0, 1, 3)):
        assert _iou(out.masks[k].numpy(), truth == quadrant) >= 0.95
    assert not out.masks[:, truth == 2].any()  # no label attends there: it stays unlabelled


def test_symmetric_kl_is_zero_on_itself_and_nan_free_in_half_precision():
    a = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]]).half()
    distance = symmetric_kl(a, a)
    assert torch.isfinite(distance).all()
    assert distance.diagonal().abs().max() < 1e-4 and distance[0, 1] > 1
    assert torch.allclose(distance, distance.T)


def test_anchor_grid_matches_the_official_code():
    indices = anchor_indices((64, 64), 16)
    rows = sorted({int(i) // 64 for i in indices})
    assert rows == list(range(1, 62, 4)) and len(indices) == 256
    assert len(anchor_indices((16, 24), 16)) == 16 * 16
    two_clusters = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0, 0, 1.0, 0], [0, 0, 0.9, 0.1]])
    two_clusters = two_clusters / two_clusters.sum(1, keepdim=True)
    assert merge(two_clusters, torch.arange(4), (0.9, 0.9)).shape[0] == 2


def test_every_method_runs_through_the_pipeline(tiny_model):
    segmenter = Segmenter(tiny_model)
    image = Image.fromarray(render(make_scene(4), 200).image).resize((150, 110))
    for name in METHODS:
        result = segmenter.segment(image, ["cat", "dog"], method=name)
        assert result.method == name and [m.mask.shape for m in result.masks] == [(110, 150)] * 2
        stacked = np.stack([m.mask > 0 for m in result.masks])
        assert stacked.sum(0).max() <= 1
    t2m = segmenter.segment(image, ["cat"], method="t2m", noise_draws=2)
    assert t2m.settings["noise_mode"] == "noise" and "a tree" in t2m.prompts[0] and t2m.labels == ["cat"]


def test_segment_everything_partitions_the_image(tiny_model):
    segmenter = Segmenter(tiny_model)
    result = segmenter.segment_everything(Image.fromarray(render(make_scene(5), 200).image).resize((170, 130)))
    assert result.method == "diffseg" and result.labels[0] == "segment 1"
    stacked = np.stack([m.mask > 0 for m in result.masks])
    assert stacked.sum(0).max() == 1 and stacked.any(0).all()  # disjoint, and covering the image
    areas = [m.area for m in result.masks]
    assert areas == sorted(areas, reverse=True)
    assert all(0 <= m.score <= 1 for m in result.masks)


def test_coco_rle_is_column_major_starting_with_background():
    mask = np.array([[0, 1], [1, 1]], dtype=np.uint8)
    assert coco_rle(mask) == {"size": [2, 2], "counts": [1, 3]}
    assert coco_rle(np.ones((2, 2)))["counts"] == [0, 4]


def _decode_coco(rle):
    flat = np.zeros(sum(rle["counts"]), dtype=bool)
    position, value = 0, False
    for run in rle["counts"]:
        flat[position : position + run] = value
        position += run
        value = not value
    return flat.reshape(rle["size"], order="F")


def test_synthetic_dataset_layout_and_resume(tiny_model, tmp_path):
    synthesizer = Synthesizer(Segmenter(tiny_model), steps=4, guidance=5.0)
    first = write_dataset(tmp_path, synthesizer, ["cat", "dog"], per_label=2)
    assert first == {"generated": 4, "skipped": 0, "total": 4}
    assert (tmp_path / "labels.txt").read_text().split() == ["background", "cat", "dog"]
    names = (tmp_path / "ImageSets/Segmentation/train.txt").read_text().split()
    assert names == ["cat_00000", "cat_00001", "dog_00000", "dog_00001"]
    coco = json.loads((tmp_path / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["cat", "dog"] and len(coco["images"]) == 4
    for annotation in coco["annotations"]:
        image = coco["images"][annotation["image_id"] - 1]
        classes = np.asarray(Image.open(tmp_path / "SegmentationClass" / (Path(image["file_name"]).stem + ".png")))
        assert np.array_equal(_decode_coco(annotation["segmentation"]), classes == annotation["category_id"])
    dog = np.asarray(Image.open(tmp_path / "SegmentationClass/dog_00000.png"))
    assert set(np.unique(dog)) <= {0, 2}  # the dog image's mask is class 2 only
    (tmp_path / "meta/dog_00001.json").unlink()  # an interrupted sample is redone, the rest kept
    again = write_dataset(tmp_path, synthesizer, ["cat", "dog"], per_label=2)
    assert again == {"generated": 1, "skipped": 3, "total": 4}


def test_heatmap_and_synth_commands(tiny_model_dir, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    exe = str(Path(sys.executable).with_name("seediff"))
    Image.fromarray(render(make_scene(1), 256).image).resize((120, 90)).save(tmp_path / "a.png")
    done = subprocess.run([exe, "heatmap", "a.png", "--labels", "cat", "dog", "--model", str(tiny_model_dir),
                           "--out", "hm", "--steps", "2"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "hm/a").iterdir()) == ["cat.heat.png", "cat.png", "dog.heat.png", "dog.png"]
    assert Image.open(tmp_path / "hm/a/cat.heat.png").size == (120, 90)
    done = subprocess.run([exe, "synth", "--labels", "cat", "--per-label", "1", "--out", "ds", "--model",
                           str(tiny_model_dir), "--sampling-steps", "3"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ds/JPEGImages/cat_00000.jpg").exists() and (tmp_path / "ds/annotations.json").exists()
