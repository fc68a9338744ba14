"""Backend pieces on their own: RLE, label configs, regions, hints from context, settings, the worker."""

from __future__ import annotations

import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor
import time

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from label_studio_sdk.label_interface import LabelInterface
from PIL import Image

from backend.controls import parse_targets
from backend.model import hints_from_context
from backend.rle import mask_to_rle, rle_to_mask
from seediff_core.regions import regions_of
from backend.settings import BackendSettings
from backend.errors import Unavailable
from backend.worker import INTERACTIVE, InferenceWorker, ModelHolder, QueueFull

# ----------------------------------------------------------------------------- RLE


def _masks():
    rng = np.random.default_rng(0)
    yield np.zeros((1, 1), np.uint8)
    yield np.full((1, 1), 255, np.uint8)
    yield np.full((300, 300), 255, np.uint8)  # one run over 2**16 values, split
    yield (rng.random((40, 33)) > 0.5).astype(np.uint8) * 255  # worst case: many short runs
    yield rng.integers(0, 256, (17, 23)).astype(np.uint8)  # values other than 0/255
    for n in (1, 2, 3, 4, 5, 16, 17, 64, 65, 16384, 16385):  # run lengths at every size-class edge
        mask = np.zeros((1, 40000), np.uint8)
        mask[0, :n] = 255
        yield mask
    for _ in range(20):
        h, w = rng.integers(1, 300, 2)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(rng.integers(0, 4)):
            cv2.circle(mask, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(1, 100)), 255, -1)
        yield mask


def test_fast_rle_gives_the_sdk_bytes_and_decodes_back():
    for mask in _masks():
        rle = mask_to_rle(mask)
        assert rle == mask2rle(mask), mask.shape
        assert np.array_equal(rle_to_mask(rle, *mask.shape), mask)


def test_rle_rejects_bad_masks():
    with pytest.raises(ValueError, match="2-D"):
        mask_to_rle(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mask_to_rle(np.zeros((2, 2), bool))


# ----------------------------------------------------------------------------- label configs

CONFIG = """<View>
  <Image name="photo" value="$image"/>
  <Text name="caption" value="$text"/>
  <BrushLabels name="brush" toName="photo">
    <Label value="Cat" predicted_values="cat,kitten"/><Label value="Dog"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="photo"><Label value="Dog"/><Label value="Car"/></PolygonLabels>
  <Labels name="ner" toName="caption"><Label value="Cat"/></Labels>
  <KeyPointLabels name="kp" toName="photo" smart="true"><Label value="Cat"/></KeyPointLabels>
</View>"""


def test_controls_on_one_image_share_a_target():
    (target,) = parse_targets(LabelInterface(CONFIG))
    assert (target.object_name, target.data_key) == ("photo", "image")
    assert [c.tag for c in target.controls] == ["BrushLabels", "PolygonLabels"]
    assert target.labels == ["Cat", "Dog", "Car"]
    assert target.words == {"Cat": ["cat", "kitten"]}


def test_several_images_and_bitmasks():
    config = """<View><Image name="a" value="$left"/><Image name="b" value="$right"/>
      <BrushLabels name="x" toName="a"><Label value="Sky"/></BrushLabels>
      <BitmaskLabels name="y" toName="b"><Label value="Road"/></BitmaskLabels></View>"""
    targets = parse_targets(LabelInterface(config))
    assert [(t.object_name, t.data_key, t.labels) for t in targets] == [("a", "left", ["Sky"]), ("b", "right", ["Road"])]


def test_a_config_without_image_segmentation_is_a_clear_error(caplog):
    config = '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
    with pytest.raises(ValueError, match="no BrushLabels, PolygonLabels or BitmaskLabels"):
        parse_targets(LabelInterface(config))


def _disk(height=120, width=90):
    mask = np.zeros((height, width), np.uint8)
    cv2.circle(mask, (40, 60), 25, 255, -1)
    cv2.rectangle(mask, (70, 5), (85, 20), 255, -1)
    return mask


def test_regions_decode_back_to_the_mask_and_validate():
    interface = LabelInterface(CONFIG)
    (target,) = parse_targets(interface)
    brush, poly = target.controls
    mask = _disk()
    found = regions_of(mask, 0.8)
    assert len(found) == 2  # the disk and the square, apart
    brushes = brush.regions("Cat", found, 120, 90)
    assert len(brushes) == 2
    decoded = np.zeros_like(mask)
    for region in brushes:
        assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Cat"]
        assert (region["original_width"], region["original_height"], region["image_rotation"]) == (90, 120, 0)
        decoded |= rle_to_mask(region["value"]["rle"], 120, 90)
    assert np.array_equal(decoded, mask)
    polygons = poly.regions("Dog", found, 120, 90)
    assert len(polygons) == 2  # one per object
    drawn = np.zeros_like(mask)
    for p in polygons:
        points = np.array(p["value"]["points"]) / 100 * [90, 120]
        assert (points >= 0).all() and (points[:, 0] <= 90).all() and (points[:, 1] <= 120).all()
        cv2.fillPoly(drawn, [np.round(points - 0.5).astype(np.int32)], 255)
    overlap = ((drawn > 0) & (mask > 0)).sum() / ((drawn > 0) | (mask > 0)).sum()
    assert overlap > 0.9
    prediction = {"result": [*brushes, *polygons], "score": 0.7, "model_version": "v"}
    assert interface.validate_prediction(prediction, return_errors=True) in (True, [], None)


def test_each_region_carries_its_own_score():
    (target,) = parse_targets(LabelInterface(CONFIG))
    brush, poly = target.controls
    regions = regions_of(_disk(), 0.8)
    regions[1].score = 0.3
    for control in (brush, poly):
        assert [r["score"] for r in control.regions("Cat", regions, 120, 90)] == [0.8, 0.3]


def test_bitmask_regions_carry_a_png_of_the_mask():
    config = '<View><Image name="i" value="$image"/><BitmaskLabels name="b" toName="i"><Label value="A"/></BitmaskLabels></View>'
    (target,) = parse_targets(LabelInterface(config))
    drawn = np.zeros((120, 90), np.uint8)
    for region in target.controls[0].regions("A", regions_of(_disk(), 0.9), 120, 90):
        header, payload = region["value"]["imageDataURL"].split(",", 1)
        assert header == "data:image/png;base64" and region["value"]["bitmasklabels"] == ["A"]
        drawn |= np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))))
    assert np.array_equal(drawn, _disk())


# ----------------------------------------------------------------------------- interactive context


def test_keypoints_and_rectangles_become_hints():
    context = [
        {"type": "keypointlabels", "value": {"x": 25.0, "y": 50.0, "width": 1, "keypointlabels": ["Cat"]}, "is_positive": True},
        {"type": "keypointlabels", "value": {"x": 75.0, "y": 10.0, "width": 1, "keypointlabels": ["Cat"]}, "is_positive": False},
        {"type": "rectanglelabels", "value": {"x": 10, "y": 20, "width": 30, "height": 40, "rectanglelabels": ["Dog"]}},
        {"type": "keypointlabels", "value": {"x": 5, "y": 5, "keypointlabels": ["Unknown"]}},
    ]
    hints = hints_from_context(context, ["Cat", "Dog"])
    assert set(hints) == {"Cat", "Dog"}
    assert hints["Cat"].positive == ((0.25, 0.5),) and hints["Cat"].negative == ((0.75, 0.1),)
    assert hints["Dog"].boxes == ((0.1, 0.2, 0.4, 0.6),)


# ----------------------------------------------------------------------------- settings


def test_settings_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LABEL_STUDIO_HOST", "http://ls:8080/")
    monkeypatch.setenv("LABEL_STUDIO_ACCESS_TOKEN", "abc")
    monkeypatch.setenv("SEEDIFF_TIMESTEP", "300")
    monkeypatch.setenv("SEEDIFF_METHOD", "crossattn")
    monkeypatch.setenv("SEEDIFF_SETTINGS", '{"final_threshold": 0.7}')
    monkeypatch.setenv("SEEDIFF_ALLOWED_HOSTS", "images.example.com, cdn.example.com")
    settings = BackendSettings.from_env(port=9999, model_dir=tmp_path, device="cpu")
    assert settings.label_studio_url == "http://ls:8080" and settings.api_key == "abc"
    assert settings.pipeline == {"final_threshold": 0.7, "timestep": 300, "method": "crossattn", "device": "cpu"}
    assert settings.port == 9999 and settings.allowed_hosts == ("images.example.com", "cdn.example.com")


@pytest.mark.parametrize("env, message", [
    ({"SEEDIFF_TIMESTEP": "5000"}, "outside"),
    ({"SEEDIFF_SETTINGS": "[1]"}, "JSON object"),
    ({"BASIC_AUTH_USER": "u"}, "both"),
])
def test_bad_settings_fail_at_start(monkeypatch, env, message):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match=message):
        BackendSettings.from_env()


# ----------------------------------------------------------------------------- worker


def test_worker_runs_interactive_jobs_before_queued_batch_jobs():
    worker = InferenceWorker(capacity=10)
    gate = threading.Event()
    order = []
    blocker = worker.submit([gate.wait])[0]  # occupies the worker
    time.sleep(0.05)
    batch = worker.submit([lambda i=i: order.append(f"batch{i}") for i in range(3)])
    interactive = worker.submit([lambda: order.append("click")], priority=0)
    gate.set()
    for future in [blocker, *batch, *interactive]:
        future.result(5)
    assert order == ["click", "batch0", "batch1", "batch2"]


def test_a_full_queue_refuses_all_or_nothing_and_failures_do_not_kill_the_worker():
    worker = InferenceWorker(capacity=2)
    gate = threading.Event()
    held = worker.submit([gate.wait, gate.wait])
    with pytest.raises(QueueFull) as info:
        worker.submit([lambda: 1])
    assert info.value.retry_after >= 1 and worker.stats["rejected"] == 1
    click = worker.submit([lambda: "click"], priority=INTERACTIVE)[0]  # an annotator is never refused
    gate.set()
    assert click.result(5) == "click"
    for future in held:
        future.result(5)
    (failing,) = worker.submit([lambda: 1 / 0])
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    assert worker.submit([lambda: 42])[0].result(5) == 42


def test_model_holder_reports_loading_ready_and_errors():
    gate = threading.Event()
    holder = ModelHolder(lambda: gate.wait() and "model")
    assert holder.state == "loading"
    with pytest.raises(Unavailable, match="still loading") as info:
        holder.get(timeout=0.01)
    assert info.value.retry_after > 0
    gate.set()
    assert holder.get(timeout=5) == "model" and holder.state == "ready"
    broken = ModelHolder(lambda: (_ for _ in ()).throw(OSError("no weights")))
    with pytest.raises(Unavailable, match="failed to load: OSError: no weights"):
        broken.get(timeout=5)
    assert broken.state == "error"


# ----------------------------------------------------------------------------- state


def test_a_damaged_state_database_is_moved_aside_and_rebuilt(tmp_path):
    from backend.state import ProjectState

    path = tmp_path / "cache.db"
    path.write_bytes(b"SQLite format 3\0" + b"torn" * 2000)
    state = ProjectState(path)
    state.set("1", "label_config", "<View/>")
    assert state.get("1", "label_config") == "<View/>"
    (aside,) = tmp_path.glob("cache.db.corrupt-*")
    assert aside.read_bytes().endswith(b"torn")


def test_a_deleted_state_database_is_opened_anew_in_every_thread(tmp_path):
    from backend.state import ProjectState

    state = ProjectState(tmp_path / "cache.db")
    state.set("1", "k", "old")
    with ThreadPoolExecutor(1) as other:  # one thread that keeps its own connection between calls
        assert other.submit(state.get, "1", "k").result() == "old"
        (tmp_path / "cache.db").unlink()
        state.set("1", "k", "new")
        assert other.submit(state.get, "1", "k").result() == "new"
    assert state.get("1", "k") == "new" and (tmp_path / "cache.db").is_file()
