"""The ML-backend protocol through Flask's test client, on the tiny model (real model, real app)."""

from __future__ import annotations

import base64
import io
import threading
import time

import numpy as np
import pytest
from PIL import Image

from backend.rle import rle_to_mask
from backend.server import create_app
from backend.settings import BackendSettings
from seediff_core.scenes import make_scene, render

SMALL = {"seed_factor": 2, "expansion_factors": [2, 1], "inversion_steps": 2}
CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="Cat" predicted_values="cat"/><Label value="Dog"/></BrushLabels>'
          '<PolygonLabels name="poly" toName="image"><Label value="Cat"/></PolygonLabels></View>')


def _url(width=200, height=150, seed=1) -> str:
    buffer = io.BytesIO()
    Image.fromarray(render(make_scene(seed), 256).image).resize((width, height)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _settings(tiny_model_dir, tmp_path, **changes) -> BackendSettings:
    values = dict(model=str(tiny_model_dir), model_dir=tmp_path, pipeline=dict(SMALL, device="cpu"))
    values.update(changes)
    return BackendSettings(**values)


def _ready(client, timeout=60):
    deadline = time.time() + timeout
    while client.get("/health").json["model_state"] == "loading" and time.time() < deadline:
        time.sleep(0.05)


@pytest.fixture
def client(tiny_model_dir, tmp_path):
    client = create_app(_settings(tiny_model_dir, tmp_path)).test_client()
    _ready(client)
    return client


def _predict(client, tasks, context=None, project="4.1700000000"):
    return client.post("/predict", json={"tasks": tasks, "project": project, "label_config": CONFIG,
                                         "params": {"login": None, "password": None, "context": context}})


def test_health_setup_versions_and_metrics(client):
    health = client.get("/health").json
    assert health["status"] == "UP" and health["model_state"] == "ready" and client.get("/").json == health
    setup = client.post("/setup", json={"project": "4.1700000000", "schema": CONFIG, "extra_params": None})
    version = setup.json["model_version"]
    # The product's name once, then the model: SeeDiff is the default method and is not repeated.
    assert setup.status_code == 200 and version.startswith("seediff-") and not version.startswith("seediff-seediff-")
    assert client.post("/versions", json={"project": "4"}).json["versions"] == [version]
    metrics = client.get("/metrics").json
    assert metrics["model_state"] == "ready" and metrics["queue"]["capacity"] == 256


def test_one_bad_image_fails_only_its_own_task(client):
    tasks = [{"id": 1, "data": {"image": _url()}}, {"id": 2, "data": {"image": "data:image/png;base64,AAAA"}},
             {"id": 3, "data": {"picture": "elsewhere"}}, {"id": 4, "data": {"image": _url(90, 130, seed=2)}}]
    response = _predict(client, tasks)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 4 and results[1] == [] and results[2] == []
    for prediction, (width, height) in ((results[0], (200, 150)), (results[3], (90, 130))):
        assert prediction["model_version"] == response.json["model_version"]
        assert 0 <= prediction["score"] <= 1
        brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
        assert brush, prediction
        for region in brush:
            assert (region["original_width"], region["original_height"]) == (width, height)
            mask = rle_to_mask(region["value"]["rle"], height, width)
            assert set(np.unique(mask)) <= {0, 255} and mask.any()
    metrics = client.get("/metrics").json
    assert metrics["tasks_ok"] == 2 and metrics["tasks_failed"] == 2
    # A request whose images all fail (nothing to send to the model) still answers per task.
    alone = _predict(client, [tasks[1]])
    assert alone.status_code == 200 and alone.json["results"] == [[]]


def test_interactive_clicks_refine_only_the_clicked_label(client):
    context = {"result": [
        {"type": "keypointlabels", "from_name": "kp", "to_name": "image", "is_positive": True,
         "value": {"x": 30.0, "y": 40.0, "width": 1.0, "keypointlabels": ["Dog"]}},
        {"type": "rectanglelabels", "from_name": "box", "to_name": "image",
         "value": {"x": 10.0, "y": 10.0, "width": 50.0, "height": 60.0, "rectanglelabels": ["Dog"]}},
    ]}
    response = _predict(client, [{"id": 9, "data": {"image": _url()}}], context)
    (prediction,) = response.json["results"]
    assert prediction["result"], prediction
    for region in prediction["result"]:
        assert region["value"]["brushlabels"] == ["Dog"]
        mask = rle_to_mask(region["value"]["rle"], 150, 200) > 0
        ys, xs = np.nonzero(mask)
        assert xs.max() <= 0.6 * 200 + 3 and ys.max() <= 0.7 * 150 + 3  # inside the box


def test_extra_params_change_settings_and_version_and_are_validated(client):
    plain = client.post("/setup", json={"project": "5.1", "schema": CONFIG, "extra_params": {}}).json["model_version"]
    tuned = client.post("/setup", json={"project": "5.1", "schema": CONFIG,
                                        "extra_params": {"t": 150, "prompts": {"Dog": ["puppy"]}}}).json["model_version"]
    assert plain != tuned and "-t150-" in tuned
    other = client.post("/setup", json={"project": "15.1", "schema": CONFIG, "extra_params": {"method": "diffseg"}})
    assert other.json["model_version"].startswith("seediff-diffseg-")  # another method is named
    response = _predict(client, [{"id": 1, "data": {"image": _url()}}], project="5.1")
    assert response.json["results"][0]["model_version"] == tuned
    bad = client.post("/setup", json={"project": "6.1", "schema": CONFIG, "extra_params": {"final_treshold": 0.5}})
    assert bad.status_code == 400 and "final_treshold" in bad.json["error"]


def test_configs_without_image_segmentation_get_a_clear_400(client):
    config = '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="A"/></Labels></View>'
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": "x"}}], "project": "8.1",
                                             "label_config": config})
    assert response.status_code == 400 and "BrushLabels" in response.json["error"]
    assert client.post("/predict", json={"tasks": []}).status_code == 400


def test_webhook_answers_at_once(client):
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED"}).status_code == 200
    started = time.perf_counter()
    response = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 4}, "annotation": {}})
    assert response.status_code == 201 and time.perf_counter() - started < 1.0


def test_basic_auth(tiny_model_dir, tmp_path):
    app = create_app(_settings(tiny_model_dir, tmp_path, basic_auth_user="ls", basic_auth_pass="s3cret"))
    client = app.test_client()
    refused = client.get("/health")
    assert refused.status_code == 401 and "BASIC_AUTH_USER" in refused.json["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Basic")
    for wrong in (b"ls:wrong", b"other:s3cret", b"ls:", b":s3cret", b"ls:s3cret2", b"ls:s3cre"):
        headers = {"Authorization": "Basic " + base64.b64encode(wrong).decode()}
        assert client.get("/health", headers=headers).status_code == 401, wrong
        assert client.post("/predict", json={"tasks": [{}]}, headers=headers).status_code == 401, wrong
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).status_code == 401
    ok = client.get("/health", headers={"Authorization": "Basic " + base64.b64encode(b"ls:s3cret").decode()})
    assert ok.status_code == 200 and ok.json["status"] == "UP"


def test_a_full_queue_answers_503_with_retry_after(tiny_model_dir, tmp_path):
    app = create_app(_settings(tiny_model_dir, tmp_path, queue_size=1))
    client = app.test_client()
    _ready(client)
    gate = threading.Event()
    app.config["runtime"].worker.submit([gate.wait])  # the one slot is taken
    try:
        response = _predict(client, [{"id": 1, "data": {"image": _url()}}])
        assert response.status_code == 503 and int(response.headers["Retry-After"]) >= 1
    finally:
        gate.set()


def test_health_answers_while_the_model_loads(tmp_path):
    app = create_app(BackendSettings(model="shapes-world", model_dir=tmp_path, pipeline={"device": "cpu"}))
    started = time.perf_counter()
    health = app.test_client().get("/health")
    assert health.status_code == 200 and time.perf_counter() - started < 1.0
    assert health.json["model_state"] in ("loading", "ready")
    setup = app.test_client().post("/setup", json={"project": "1.1", "schema": CONFIG})
    assert setup.status_code == 200 and "shapes-world" in setup.json["model_version"]


def test_segment_everything_gives_unlabelled_segments_under_the_first_label(client):
    setup = client.post("/setup", json={"project": "12.1", "schema": CONFIG, "extra_params": {"segment_everything": True}})
    assert setup.status_code == 200 and "diffseg" in setup.json["model_version"]
    response = _predict(client, [{"id": 1, "data": {"image": _url()}}], project="12.1")
    (prediction,) = response.json["results"]
    brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert brush and all(r["value"]["brushlabels"] == ["Cat"] for r in brush)
    masks = np.stack([rle_to_mask(r["value"]["rle"], 150, 200) > 0 for r in brush])
    assert masks.sum(0).max() == 1


def test_annotations_are_compared_with_the_predictions(client):
    response = _predict(client, [{"id": 77, "data": {"image": _url()}}], project="13.1")
    prediction = response.json["results"][0]
    brush = [r for r in prediction["result"] if r["type"] == "brushlabels"]
    assert brush
    accepted = {"action": "ANNOTATION_CREATED", "project": {"id": 13}, "task": {"id": 77},
                "annotation": {"id": 1, "task": 77, "result": brush}}
    first = brush[0]["value"]["brushlabels"][0]

    def report_after(count):
        deadline = time.time() + 10
        while time.time() < deadline:
            report = client.get("/metrics").json["quality"].get("13", {})
            if report.get("annotations") == count:
                return report
            time.sleep(0.05)
        raise AssertionError(f"no quality report for {count} annotations")

    assert client.post("/webhook", json=accepted).status_code == 201
    report = report_after(1)
    assert report["labels"][first] == {"count": 1, "mean_iou": 1.0}  # accepted as predicted
    assert list(report["model_versions"]) == [prediction["model_version"]]
    redrawn = [{"type": "polygonlabels", "original_width": 200, "original_height": 150,
                "value": {"points": [[0, 0], [30, 0], [30, 30]], "polygonlabels": [first]}}]
    client.post("/webhook", json={**accepted, "action": "ANNOTATION_UPDATED", "annotation": {"task": 77, "result": redrawn}})
    report = report_after(2)
    assert report["labels"][first]["count"] == 2 and report["labels"][first]["mean_iou"] < 0.9
