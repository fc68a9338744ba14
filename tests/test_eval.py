"""`seediff eval` on files made from known masks: the IoUs must be the ones computed by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.evaluate import coco_mask, evaluate, read
from backend.rle import mask_to_rle
from seediff_core.synth import coco_rle

SEEDIFF = str(Path(sys.executable).with_name("seediff"))
H, W = 40, 60


def _box(y0, y1, x0, x1) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# Truth: image "a" has a cat (10x10 = 100 px) and no dog; image "b" has a dog (20x10 = 200 px).
TRUTH = {"a": {"cat": _box(0, 10, 0, 10)}, "b": {"dog": _box(10, 30, 10, 20)}}
# Prediction: a's cat shifted by 5 columns (50 px shared, union 150), plus a 20 px dog a lacks;
# b's dog exactly right (200 px).
PRED = {"a": {"cat": _box(0, 10, 5, 15), "dog": _box(30, 32, 50, 60)}, "b": {"dog": _box(10, 30, 10, 20)}}
SCORES = {"a": {"cat": 0.4, "dog": 0.1}, "b": {"dog": 0.9}}
# By hand: cat IoU 50 / 150; dog IoU (0 + 200) / (20 + 200) (a's 20 absent-label pixels join the union).
CAT, DOG = 50 / 150, 200 / 220


def _voc(folder: Path) -> Path:
    (folder / "SegmentationClass").mkdir(parents=True)
    (folder / "labels.txt").write_text("background\ncat\ndog\n")
    for name, masks in TRUTH.items():
        classes = np.zeros((H, W), np.uint8)
        for index, label in enumerate(["cat", "dog"], start=1):
            if label in masks:
                classes[masks[label]] = index
        Image.fromarray(classes, mode="L").save(folder / "SegmentationClass" / f"{name}.png")
    return folder


def _label_studio_export(path: Path, kind: str, masks_by_image, scores=None) -> Path:
    tasks = []
    for i, (name, masks) in enumerate(masks_by_image.items()):
        regions = [{"type": "brushlabels", "from_name": "label", "to_name": "image", "original_width": W,
                    "original_height": H, "score": (scores or {}).get(name, {}).get(label),
                    "value": {"format": "rle", "rle": mask_to_rle(mask.astype(np.uint8) * 255), "brushlabels": [label]}}
                   for label, mask in masks.items()]
        tasks.append({"id": i + 1, "data": {"image": f"/data/upload/1/0a1b2c3d-{name}.png"},
                      kind: [{"result": regions, "model_version": "v1"}]})
    path.write_text(json.dumps(tasks))
    return path


def test_voc_truth_and_label_studio_predictions_give_the_hand_computed_ious(tmp_path):
    truth = read(str(_voc(tmp_path / "voc")), "truth")
    pred = read(str(_label_studio_export(tmp_path / "pred.json", "predictions", PRED, SCORES)), "pred")
    metrics = evaluate(truth, pred).metrics()
    assert metrics["per_label"]["cat"]["iou"] == pytest.approx(CAT)
    assert metrics["per_label"]["dog"]["iou"] == pytest.approx(DOG)
    assert metrics["miou"] == pytest.approx((CAT + DOG) / 2)
    assert metrics["per_label"]["cat"]["precision"] == pytest.approx(0.5)
    assert metrics["per_label"]["dog"]["precision"] == pytest.approx(200 / 220)
    assert metrics["per_label"]["dog"]["recall"] == pytest.approx(1.0)
    assert metrics["absent_false_positive_rate"] == pytest.approx(0.5)  # a's dog got a mask, b's cat did not
    # Three predicted regions: scores 0.4 (IoU 1/3), 0.1 (IoU 0, absent), 0.9 (IoU 1): perfectly ranked.
    assert metrics["calibration"] == {"pairs": 3, "spearman": pytest.approx(1.0)}


def test_a_label_studio_export_as_truth_and_coco_as_prediction(tmp_path):
    truth = read(str(_label_studio_export(tmp_path / "truth.json", "annotations", TRUTH)), "truth", ["cat", "dog"])
    coco = {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H},
                       {"id": 2, "file_name": "b.png", "width": W, "height": H}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "segmentation": coco_rle(PRED["a"]["cat"])},
                {"id": 2, "image_id": 1, "category_id": 2,
                 "segmentation": [[50, 30, 60, 30, 60, 32, 50, 32]]},  # polygon of a's stray dog
                {"id": 3, "image_id": 2, "category_id": 2, "segmentation": coco_rle(PRED["b"]["dog"])}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    pred = read(str(tmp_path / "coco.json"), "pred")
    metrics = evaluate(truth, pred, ["cat", "dog"]).metrics()
    assert metrics["per_label"]["cat"]["iou"] == pytest.approx(CAT)
    assert metrics["per_label"]["dog"]["iou"] > 0.85  # the polygon rasterises a few pixels wider than the box


def test_compressed_coco_rle_decodes():
    # "0TP1" style strings are COCO's compressed form; this one encodes runs [2, 3, 5] of a 10-pixel column.
    assert coco_mask({"size": [10, 1], "counts": [2, 3, 5]}, (10, 1)).ravel().tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    assert coco_mask({"size": [10, 1], "counts": "235"}, (10, 1)).ravel().tolist() == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]


@pytest.mark.timeout(120)
def test_the_command_prints_the_table_and_writes_the_report(tmp_path):
    _voc(tmp_path / "voc")
    _label_studio_export(tmp_path / "pred.json", "predictions", PRED, SCORES)
    done = subprocess.run([SEEDIFF, "eval", "--truth", "voc", "--pred", "pred.json", "--out", "report"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{CAT:.3f}" in done.stdout and f"{DOG:.3f}" in done.stdout
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["miou"] == pytest.approx((CAT + DOG) / 2)
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Per-label IoU" in page and "Score vs IoU" in page and page.count("data:image/png;base64,") >= 2
    bad = subprocess.run([SEEDIFF, "eval", "--truth", "nothing.json", "--pred", "pred.json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nothing.json" in bad.stderr
