"""Malformed requests get 400 with {error, detail} naming the field and the fix; a model that loads
or failed to load gets 503 + Retry-After; concurrent requests are all answered. Real app, tiny model."""

from __future__ import annotations

import json
import re
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from backend import runtime as runtime_module
from backend.server import create_app
from backend.worker import ModelHolder
from test_backend_server import CONFIG, _predict, _ready, _settings, _url

PYTHON_NAMES = re.compile(r"Traceback|\b(Attribute|Key|Type|Index|Value|Name|Runtime|Zero\w*)Error\b")
TASK = {"id": 1, "data": {"image": "data:image/png;base64,AAAA"}}


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    app = create_app(_settings(tiny_model_dir, tmp_path_factory.mktemp("errors")))
    _ready(app.test_client())
    return app


def _keypoint(**value):
    return {"params": {"context": {"result": [{"type": "keypointlabels", "to_name": "image", "is_positive": True,
                                               "value": {"keypointlabels": ["Cat"], **value}}]}}}


MALFORMED = {
    # name: (route, body, the field the answer must name)
    "task not an object": ("/predict", {"tasks": [1], "label_config": CONFIG}, "tasks[0]"),
    "task null": ("/predict", {"tasks": [TASK, None], "label_config": CONFIG}, "tasks[1]"),
    "task id an object": ("/predict", {"tasks": [{"id": {}, "data": {}}], "label_config": CONFIG}, "tasks[0].id"),
    "tasks not a list": ("/predict", {"tasks": {"id": 1}, "label_config": CONFIG}, "tasks"),
    "no tasks": ("/predict", {"tasks": [], "label_config": CONFIG}, "tasks"),
    "keypoint without x": ("/predict", {"tasks": [TASK], "label_config": CONFIG, **_keypoint(y=5)}, "params.context.result[0].value.x"),
    "keypoint x a string": ("/predict", {"tasks": [TASK], "label_config": CONFIG, **_keypoint(x="left", y=5)},
                            "params.context.result[0].value.x"),
    "context result not a list": ("/predict", {"tasks": [TASK], "label_config": CONFIG, "params": {"context": {"result": "x"}}},
                                  "params.context.result"),
    "params a string": ("/predict", {"tasks": [TASK], "label_config": CONFIG, "params": "fast"}, "params"),
    "config not XML": ("/predict", {"tasks": [TASK], "label_config": "<View><Image"}, "label_config"),
    "config without Image": ("/predict", {"tasks": [TASK], "label_config": "<View><Text name='t' value='$t'/></View>"},
                             "label_config"),
    "body not JSON": ("/predict", b"{tasks: [", "body"),
    "body an array": ("/predict", [TASK], "body"),
    "project a list": ("/predict", {"tasks": [TASK], "label_config": CONFIG, "project": [7]}, "project"),
    "timestep not a number": ("/setup", {"project": "3.1", "schema": CONFIG, "extra_params": {"timestep": "abc"}},
                              "extra_params.timestep"),
    "unknown setting": ("/setup", {"project": "3.1", "schema": CONFIG, "extra_params": {"timestepp": 3}}, "extra_params"),
    "prompts a list": ("/setup", {"project": "3.1", "schema": CONFIG, "extra_params": {"prompts": ["cat"]}}, "extra_params.prompts"),
    "prompt words numbers": ("/setup", {"project": "3.1", "schema": CONFIG, "extra_params": {"prompts": {"Cat": [1]}}},
                             "extra_params.prompts.Cat"),
    "extra params a string": ("/setup", {"project": "3.1", "schema": CONFIG, "extra_params": "t=3"}, "extra_params"),
    "setup config not XML": ("/setup", {"project": "3.1", "schema": "not xml"}, "label_config"),
    "webhook project a string": ("/webhook", {"action": "ANNOTATION_CREATED", "project": "7"}, "project"),
    "webhook annotation a list": ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 7}, "annotation": []},
                                  "annotation"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_get_400_naming_the_field(app, name):
    route, body, field = MALFORMED[name]
    client = app.test_client()
    if isinstance(body, bytes):
        response = client.post(route, data=body, content_type="application/json")
    else:
        response = client.post(route, json=body)
    assert response.status_code == 400, response.data
    answer = response.json
    assert answer["detail"]["field"] == field and answer["error"].startswith(field)
    assert not PYTHON_NAMES.search(response.get_data(as_text=True))


def test_unknown_routes_and_methods_answer_json(app):
    client = app.test_client()
    missing, wrong = client.get("/nope"), client.get("/predict")
    assert missing.status_code == 404 and missing.json["error"] == "Not Found"
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"] and wrong.json["error"]


def test_a_malformed_task_fails_alone(app):
    good = {"id": 2, "data": {"image": _url()}}
    response = _predict(app.test_client(), [{"id": 1, "data": "not an object"}, good, {"id": 3}])
    assert response.status_code == 200
    first, second, third = response.json["results"]
    assert first == [] and third == [] and second["result"]
    errors = {e["index"]: e["error"] for e in response.json["errors"]}
    assert set(errors) == {0, 2} and "no data field 'image'" in errors[0]


def test_openapi_document_is_served_and_lists_every_route(app):
    document = app.test_client().get("/openapi.json").json
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/", "/health", "/setup", "/predict", "/webhook", "/metrics", "/versions", "/openapi.json"}
    for rule in app.url_map.iter_rules():
        if rule.endpoint != "static":
            assert rule.rule in document["paths"], rule.rule


def test_predict_while_the_model_loads_is_503_with_retry_after(tiny_model_dir, tmp_path, monkeypatch):
    app = create_app(_settings(tiny_model_dir, tmp_path))
    runtime = app.config["runtime"]
    gate = threading.Event()
    runtime.model = ModelHolder(lambda: gate.wait(30) and None)  # a load that has not finished
    monkeypatch.setattr(runtime_module, "MODEL_WAIT_SECONDS", 0.2)
    client = app.test_client()
    try:
        assert client.get("/health").json["model_state"] == "loading"
        response = _predict(client, [{"id": 1, "data": {"image": _url()}}])
        assert response.status_code == 503 and int(response.headers["Retry-After"]) > 0
        assert "still loading" in response.json["error"]
        assert client.post("/setup", json={"project": "1", "schema": CONFIG}).status_code == 200
    finally:
        gate.set()


def test_a_model_that_fails_to_load_is_reported_and_the_server_keeps_answering(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_dir, broken)
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # a torn download
    app = create_app(_settings(broken, tmp_path / "state"))
    client = app.test_client()
    _ready(client)
    health = client.get("/health")
    assert health.status_code == 200 and health.json["model_state"] == "error" and health.json["model_error"]
    response = _predict(client, [{"id": 1, "data": {"image": _url()}}])
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert "failed to load" in response.json["error"] and "/health" in response.json["error"]
    assert client.post("/setup", json={"project": "1", "schema": CONFIG}).status_code == 200
    assert client.get("/metrics").json["model_state"] == "error"


def test_concurrent_predictions_are_all_answered(app):
    images = [_url(seed=s) for s in range(4)]

    def one(i):
        client = app.test_client()
        return _predict(client, [{"id": i, "data": {"image": images[i % 4]}}, {"id": 100 + i, "data": {}}],
                        project=f"{20 + i % 3}.1")

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(one, range(16)))
    assert all(r.status_code == 200 for r in responses)
    assert all(r.json["results"][0]["result"] and r.json["results"][1] == [] for r in responses)
    metrics = app.test_client().get("/metrics").json
    assert metrics["queue"]["pending"] == 0 and metrics["tasks_failed"] >= 16


def test_internal_errors_hide_the_exception_and_give_a_reference(tiny_model_dir, tmp_path, caplog):
    app = create_app(_settings(tiny_model_dir, tmp_path))
    app.config["runtime"].metrics = None  # our bug: /metrics now raises AttributeError inside
    response = app.test_client().get("/metrics")
    body = response.get_data(as_text=True)
    assert response.status_code == 500 and "NoneType" not in body and not PYTHON_NAMES.search(body)
    reference = json.loads(body)["detail"]["reference"]
    assert reference in caplog.text and "AttributeError" in caplog.text
