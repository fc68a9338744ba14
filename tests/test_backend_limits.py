"""Settings that would hold the model for hours are refused with 400 before any work, a job past its
time is stopped between UNet calls, and SIGTERM stops ``seediff serve`` within 10 s even mid-job.

The refusals run through the real app (Flask's test client, the tiny model); every refusal is
followed by an ordinary /predict that must be answered. The shutdown tests run ``seediff serve`` on
the shipped model as a subprocess and send it a real SIGTERM.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest
import requests

from backend.server import create_app
from backend.settings import DEFAULT_MAX_REQUEST_COST, BackendSettings
from backend.worker import InferenceWorker, ShuttingDown
from benchmarks.load import CONFIG as SHAPES_CONFIG
from benchmarks.load import _image_url, gunicorn_worker_pid, start_server
from seediff_core import limits
from test_backend_server import CONFIG, SMALL, _predict, _ready, _settings, _url

# Each costs more than one image may (500 units) only together: every value is within its range.
OVER_COST = {"working_size": 1024, "noise_mode": "noise", "noise_draws": 32, "pamr_iterations": 10000,
             "pamr_dilations": [1, 2, 4, 8, 16, 32, 64, 64]}
# Within every per-image limit (about 405 units on the tiny model) but not 20 times in one request.
HEAVY = {"working_size": 1024, "noise_mode": "invert", "inversion_steps": 100}
MANY_LABELS = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
               + "".join(f'<Label value="w{i}"/>' for i in range(limits.MAX_LABELS + 1)) + "</BrushLabels></View>")

# name: (extra params, labeling config, the field the 400 must name, text the message must hold)
REFUSED = {
    "noise draws": ({"noise_mode": "noise", "noise_draws": 1_000_000}, CONFIG, "extra_params.noise_draws", "1..32"),
    "pamr iterations": ({"pamr_iterations": 100_000_000}, CONFIG, "extra_params.pamr_iterations", "0..10000"),
    "inversion steps": ({"inversion_steps": 1_000_000}, CONFIG, "extra_params.inversion_steps", "1..100"),
    "inversion steps as steps": ({"steps": 1_000_000}, CONFIG, "extra_params.inversion_steps", "1..100"),
    "working size": ({"working_size": 100_000}, CONFIG, "extra_params.working_size", "64..1024"),
    "batch size": ({"batch_size": 100_000}, CONFIG, "extra_params.batch_size", "1..64"),
    "attention chunk": ({"attention_chunk": 10**9}, CONFIG, "extra_params.attention_chunk", "16..16384"),
    "too many pamr dilations": ({"pamr_dilations": [1] * 9}, CONFIG, "extra_params.pamr_dilations", "at most 8"),
    "too many labels": ({}, MANY_LABELS, "label_config", f"at most {limits.MAX_LABELS}"),
    "too many prompt words": ({"prompts": {"Cat": [f"cat{i}" for i in range(limits.MAX_WORDS_PER_LABEL + 1)]}},
                              CONFIG, "extra_params.prompts.Cat", f"at most {limits.MAX_WORDS_PER_LABEL}"),
    "too many synonyms": ({"synonyms": {"Dog": [f"dog{i}" for i in range(limits.MAX_WORDS_PER_LABEL)]}},
                          CONFIG, "extra_params.synonyms", f"at most {limits.MAX_WORDS_PER_LABEL}"),
    "over-cost combination": (OVER_COST, CONFIG, "extra_params", "SEEDIFF_MAX_IMAGE_COST"),
}


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    app = create_app(_settings(tiny_model_dir, tmp_path_factory.mktemp("limits")))
    _ready(app.test_client())
    return app


def _answered(client) -> None:
    """An ordinary request of another project is answered with masks: the server still serves."""
    response = _predict(client, [{"id": 1, "data": {"image": _url()}}], project="99.1")
    assert response.status_code == 200 and response.json["results"][0]["result"], response.json


def _refused(response, field: str, text: str) -> None:
    assert response.status_code == 400, response.json
    detail = response.json["detail"]
    assert detail["field"] == field and text in response.json["error"], response.json
    assert detail.get("fix"), response.json  # says what to do, not only what is wrong


@pytest.mark.parametrize("name", list(REFUSED))
def test_each_limit_is_refused_at_setup_and_predict_naming_the_field(app, name):
    extra, config, field, text = REFUSED[name]
    client, worker = app.test_client(), app.config["runtime"].worker
    project = f"{300 + list(REFUSED).index(name)}.1"
    _refused(client.post("/setup", json={"project": project, "schema": config, "extra_params": extra}), field, text)
    _answered(client)
    # /predict reads the project's settings as /setup stored them: refused again, before any work.
    completed = worker.stats["completed"]
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": _url()}}], "project": project,
                                             "label_config": config})
    _refused(response, field, text)
    assert worker.stats["completed"] == completed and worker.pending == 0
    _answered(client)


def test_a_request_over_the_total_cost_is_refused_before_any_work(app):
    client, worker = app.test_client(), app.config["runtime"].worker
    assert client.post("/setup", json={"project": "40.1", "schema": CONFIG, "extra_params": HEAVY}).status_code == 200
    completed = worker.stats["completed"]
    tasks = [{"id": i, "data": {"image": _url()}} for i in range(20)]  # 20 x ~405 units > 5000
    response = _predict(client, tasks, project="40.1")
    _refused(response, "tasks", f"{DEFAULT_MAX_REQUEST_COST:g} units per request")
    fix = response.json["detail"]["fix"]
    assert "fewer" in fix and "seediff prelabel" in fix and "SEEDIFF_MAX_REQUEST_COST" in fix
    assert worker.stats["completed"] == completed and worker.pending == 0
    _answered(client)


def test_more_tasks_than_the_queue_can_ever_hold_are_refused_not_retried(app):
    # Label Studio's "Retrieve predictions" sends the whole selection in one request; a 503 would
    # only have it retry a request that can never fit.
    client = app.test_client()
    tasks = [{"id": i, "data": {"image": "x.png"}} for i in range(app.config["runtime"].worker.capacity + 1)]
    response = _predict(client, tasks, project="41.1")
    _refused(response, "tasks", "more than the model's queue can ever hold")
    assert "seediff prelabel" in response.json["detail"]["fix"]
    _answered(client)


def test_while_the_model_loads_setup_still_checks_ranges_and_labels(tiny_model_dir, tmp_path):
    from backend.worker import ModelHolder

    app = create_app(_settings(tiny_model_dir, tmp_path))
    gate = threading.Event()
    app.config["runtime"].model = ModelHolder(lambda: gate.wait(30) and None)  # a load that has not finished
    client = app.test_client()
    try:
        for name in ("noise draws", "too many labels", "too many prompt words"):
            extra, config, field, text = REFUSED[name]
            _refused(client.post("/setup", json={"project": "1.1", "schema": config, "extra_params": extra}), field, text)
        # The cost needs the model's layers: /setup answers now, /predict will check it.
        assert client.post("/setup", json={"project": "1.1", "schema": CONFIG, "extra_params": OVER_COST}).status_code == 200
    finally:
        gate.set()


def test_the_limits_env_vars_are_read_and_checked_at_start(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SEEDIFF_MAX_REQUEST_COST", "100")
    monkeypatch.setenv("SEEDIFF_JOB_SECONDS", "30")
    settings = BackendSettings.from_env(model=str(tiny_model_dir), model_dir=tmp_path)
    assert (settings.max_request_cost, settings.job_seconds) == (100, 30)
    for name in ("SEEDIFF_MAX_REQUEST_COST", "SEEDIFF_JOB_SECONDS", "SEEDIFF_MAX_IMAGE_COST"):
        monkeypatch.setenv(name, "-1")
        with pytest.raises(ValueError, match=name):
            BackendSettings.from_env(model=str(tiny_model_dir), model_dir=tmp_path)
        monkeypatch.delenv(name)


def test_a_job_past_its_time_fails_alone_and_the_next_request_is_answered(tiny_model_dir, tmp_path, monkeypatch):
    # 2 s per job: the long job's 101 UNet calls take ~50 s here, an ordinary request ~0.3 s.
    monkeypatch.setenv("SEEDIFF_JOB_SECONDS", "2")
    settings = BackendSettings.from_env(model=str(tiny_model_dir), model_dir=tmp_path, device="cpu", **SMALL)
    app = create_app(settings)
    client = app.test_client()
    _ready(client)
    long = {"working_size": 512, "noise_mode": "invert", "inversion_steps": 100}
    assert client.post("/setup", json={"project": "50.1", "schema": CONFIG, "extra_params": long}).status_code == 200
    response = _predict(client, [{"id": 7, "data": {"image": _url()}}], project="50.1")
    assert response.status_code == 200 and response.json["results"] == [[]]
    (error,) = response.json["errors"]
    assert error["task"] == 7 and "SEEDIFF_JOB_SECONDS" in error["error"] and "stopped after 2 s" in error["error"]
    worker = app.config["runtime"].worker
    assert worker.stats["stopped"] == 1 and worker._thread.is_alive()
    _answered(client)


def test_the_readme_limits_tables_are_the_ones_the_limits_generate():
    from tools.limits_table import readme_section, tables

    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert readme_section(readme.read_text()) == tables(), "run: bash tools/dev.sh python tools/limits_table.py --write"


def test_after_stop_queued_and_new_jobs_get_503():
    worker = InferenceWorker(capacity=4)
    started, gate = threading.Event(), threading.Event()
    running = worker.submit([lambda: started.set() or gate.wait()])[0]
    queued = worker.submit([lambda: "never"])[0]
    assert started.wait(5)
    worker.stop()
    gate.set()
    running.result(5)
    with pytest.raises(ShuttingDown):
        queued.result(5)
    with pytest.raises(ShuttingDown):
        worker.submit([lambda: 1])


# ----------------------------------------------------------------------------- SIGTERM mid-job


def _long_request(url: str, extra: dict, answers: list) -> threading.Thread:
    """/setup a project with ``extra``, then one /predict in a thread; its response (or the error)
    lands in ``answers``. Returns once the worker has the job."""
    setup = requests.post(f"{url}/setup", json={"project": "60.1", "schema": SHAPES_CONFIG, "extra_params": extra},
                          timeout=30)
    assert setup.status_code == 200, setup.text

    def run():
        try:
            answers.append(requests.post(f"{url}/predict", json={"tasks": [{"id": 1, "data": {"image": _image_url(5)}}],
                                                                 "project": "60.1", "label_config": SHAPES_CONFIG},
                                         timeout=120))
        except requests.RequestException as exc:
            answers.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while requests.get(f"{url}/health", timeout=5).json()["queued"] == 0:
        assert time.time() < deadline, "the job never reached the worker"
        time.sleep(0.05)
    return thread


def _sigterm_and_time_the_exit(server) -> float:
    worker_pid = gunicorn_worker_pid(server)
    started = time.monotonic()
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(20)
    except Exception:
        server.kill()
        raise
    elapsed = time.monotonic() - started
    assert not _running(worker_pid)  # the model's process is gone too, not orphaned
    return elapsed


def _running(pid: int) -> bool:
    try:
        status = open(f"/proc/{pid}/status").read()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited: only its parent has not reaped it


@pytest.mark.timeout(180)
def test_sigterm_stops_serve_within_10_s_and_answers_the_job_it_stops(tmp_path):
    # Inversion: 101 UNet calls of under a second each here; the job is stopped at its next one.
    server, url = start_server(tmp_path)
    try:
        answers: list = []
        thread = _long_request(url, {"noise_mode": "invert", "inversion_steps": 100, "working_size": 512}, answers)
        time.sleep(1)  # inside the inversion
        assert _sigterm_and_time_the_exit(server) < 10  # the requirement itself is a time bound
        thread.join(10)
        (answer,) = answers
        assert isinstance(answer, requests.Response) and answer.status_code == 503, answer
        assert "shutting down" in answer.json()["error"] and answer.headers["Retry-After"]
    finally:
        server.kill()


@pytest.mark.timeout(180)
def test_sigterm_stops_serve_within_10_s_during_a_step_that_cannot_be_stopped(tmp_path):
    # One UNet call, then minutes of refinement (10000 PAMR iterations at 512 px, ~160 units, within
    # the limits): nothing asks should_stop any more, so only the grace period ends the worker.
    server, url = start_server(tmp_path)
    try:
        answers: list = []
        _long_request(url, {"pamr_iterations": 10000, "working_size": 512}, answers)
        time.sleep(4)  # past the UNet call (about a second here), into the refinement
        assert _sigterm_and_time_the_exit(server) < 10
    finally:
        server.kill()
