"""`seediff prelabel`: bulk pre-labelling of a real Label Studio project and of files.

The project tests run the command as a user would (a subprocess, env LABEL_STUDIO_URL and
LABEL_STUDIO_API_KEY) against a real Label Studio with 40 shapes-world scenes and one broken image,
and read back what Label Studio stored.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from backend.prelabel import UsageError, has_version, parse_task_ids, tasks_from
from label_studio_server import TOKEN
from seediff_core.scenes import TEST_SEEDS, make_scene, render

SEEDIFF = str(Path(sys.executable).with_name("seediff"))
LABELS = ["circle", "square", "triangle", "star"]
CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
          + "".join(f'<Label value="{label}"/>' for label in LABELS) + "</BrushLabels></View>")


def _png(seed: int, size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render(make_scene(seed), size).image).save(buffer, format="PNG")
    return buffer.getvalue()


def _run(args: list[str], cwd: Path, env: dict, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([SEEDIFF, "prelabel", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          **kwargs)


def _env(tmp_path: Path, **extra) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
                MODEL_DIR=str(tmp_path / "models"), SEEDIFF_MODEL="shapes-world", **extra)


def test_task_id_lists_and_ranges():
    assert parse_task_ids("1,2, 5-7") == [1, 2, 5, 6, 7]
    for bad in ("1,x", "9-5", "3-"):
        with pytest.raises(UsageError, match="1,2,5-9"):
            parse_task_ids(bad)


def test_a_folder_becomes_local_files_tasks_and_a_json_keeps_its_ids(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "a.png").write_bytes(_png(1))
    (tmp_path / "imgs" / "sub" / "b.JPG").write_bytes(_png(2))
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    tasks, root = tasks_from(tmp_path / "imgs")
    assert root == tmp_path / "imgs"
    assert [t["data"]["image"] for t in tasks] == ["/data/local-files/?d=a.png", "/data/local-files/?d=sub/b.JPG"]
    (tmp_path / "tasks.json").write_text(json.dumps([{"id": 7, "data": {"image": "x.png"}}, {"image": "y.png"}]))
    tasks, root = tasks_from(tmp_path / "tasks.json")
    assert root is None and [t["id"] for t in tasks] == [7, 2] and tasks[1]["data"] == {"image": "y.png"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        tasks_from(tmp_path / "empty")


def test_has_version_reads_only_the_current_version():
    task = {"predictions": [{"model_version": "old"}, {"model_version": "v2"}]}
    assert has_version(task, "v2") and not has_version(task, "v3") and not has_version({}, "v2")


@pytest.mark.timeout(300)
def test_a_folder_is_prelabelled_to_an_importable_tasks_file(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        (folder / f"scene{i}.png").write_bytes(_png(TEST_SEEDS[i]))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    done = _run(["--from", "imgs", "--to", "out.json", "--labels", ",".join(LABELS), "--report", "report.json"],
                tmp_path, _env(tmp_path))
    assert done.returncode == 1, done.stderr  # one task failed, the others were predicted
    report = json.loads((tmp_path / "report.json").read_text())
    assert (report["done"], report["failed"]) == (4, 1)
    assert "broken.png" in report["failures"][0]["reason"]
    tasks = {t["data"]["image"].split("d=")[1]: t for t in json.loads((tmp_path / "out.json").read_text())}
    assert set(tasks) == {"scene0.png", "scene1.png", "scene2.png", "scene3.png", "broken.png"}
    assert "predictions" not in tasks["broken.png"]
    for name in ("scene0.png", "scene1.png"):
        (prediction,) = tasks[name]["predictions"]
        assert prediction["model_version"] == report["model_version"]
        assert prediction["result"] and all(r["type"] == "brushlabels" for r in prediction["result"])
    usage = _run(["--from", "imgs"], tmp_path, _env(tmp_path))
    assert usage.returncode == 2 and "--to" in usage.stderr


@pytest.fixture(scope="module")
def project(label_studio):
    """A project of 40 scenes and one broken image."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=label_studio, api_key=TOKEN)
    created = client.projects.create(title="seediff prelabel", label_config=CONFIG)
    files = {f"f{i}": (f"scene{i}.png", _png(TEST_SEEDS[200 + i]), "image/png") for i in range(40)}
    files["broken"] = ("broken.png", b"\x89PNG\r\n\x1a\n not an image", "image/png")
    imported = requests.post(f"{label_studio}/api/projects/{created.id}/import", files=files,
                             headers={"Authorization": f"Token {TOKEN}"}, timeout=120)
    assert imported.status_code == 201, imported.text
    return client, created.id


def _predictions_per_task(client, project_id) -> dict[str, list[str]]:
    out = {}
    for task in client.tasks.list(project=project_id, fields="all"):
        name = Path(task.data["image"]).name.split("-", 1)[-1]
        out[name] = [p["model_version"] if isinstance(p, dict) else p.model_version for p in (task.predictions or [])]
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_real_project_is_prelabelled_once_and_resumes_after_kill_9(label_studio, project, tmp_path):
    client, project_id = project
    env = _env(tmp_path, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=TOKEN)
    # Killed part way: whatever was imported stays, nothing is half-written.
    process = subprocess.Popen([SEEDIFF, "prelabel", "--project", str(project_id), "--batch-size", "4"], cwd=tmp_path,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not any(_predictions_per_task(client, project_id).values()):
        time.sleep(1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = sum(len(v) for v in _predictions_per_task(client, project_id).values())
    assert 0 < partial < 40

    done = _run(["--project", str(project_id), "--report", "report.json", "--order", "uncertainty"], tmp_path, env)
    assert done.returncode == 1, done.stderr  # the broken image
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["done"] + report["skipped"] == 40 and report["failed"] == 1
    assert report["skipped"] == partial
    assert "broken.png" in report["failures"][0]["reason"]
    stored = _predictions_per_task(client, project_id)
    assert stored.pop("broken.png") == []
    assert all(versions == [report["model_version"]] for versions in stored.values()), stored
    # --order uncertainty: the project's version is the predictions', so the Data Manager shows their scores.
    assert client.projects.get(id=project_id).model_version == report["model_version"]

    again = _run(["--project", str(project_id), "--report", "again.json"], tmp_path, env)
    second = json.loads((tmp_path / "again.json").read_text())
    assert (second["done"], second["skipped"], second["failed"]) == (0, 40, 1), again.stderr

    # What the project now holds, measured against the scenes' exact masks with `seediff eval`.
    voc = tmp_path / "truth"
    (voc / "SegmentationClass").mkdir(parents=True)
    (voc / "labels.txt").write_text("\n".join(["background", *LABELS]) + "\n")
    for i in range(40):
        rendered = render(make_scene(TEST_SEEDS[200 + i]), 128)
        classes = np.zeros((128, 128), np.uint8)
        for index, label in enumerate(LABELS, start=1):
            classes[rendered.label_mask(label)] = index
        Image.fromarray(classes).save(voc / "SegmentationClass" / f"scene{i}.png")
    measured = subprocess.run([SEEDIFF, "eval", "--truth", "truth", "--pred", f"project:{project_id}",
                               "--model-version", report["model_version"], "--out", "eval"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
    assert measured.returncode == 0, measured.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 40 and not metrics["images_without_prediction"]
    # All four labels asked on every image; the 200-scene benchmark measures 0.78 at 256 px.
    assert metrics["miou"] >= 0.6, metrics["per_label"]


def test_usage_errors_exit_2_with_the_fix(label_studio, tmp_path):
    no_token = _run(["--project", "1"], tmp_path, {k: v for k, v in _env(tmp_path).items()
                                                     if k not in ("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_URL")})
    assert no_token.returncode == 2 and "LABEL_STUDIO_URL" in no_token.stderr
    env = _env(tmp_path, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=TOKEN)
    missing = _run(["--project", "99999"], tmp_path, env)
    assert missing.returncode == 2 and "project 99999 does not exist" in missing.stderr
    wrong = _run(["--project", "1"], tmp_path, {**env, "LABEL_STUDIO_API_KEY": "not-a-token"})
    assert wrong.returncode == 2 and "LABEL_STUDIO_API_KEY" in wrong.stderr
    assert np.all([r.stderr.count("\n") <= 2 for r in (no_token, missing, wrong)])  # one line, no traceback


@pytest.mark.timeout(300)
@pytest.mark.parametrize("model", ["stable-diffusion-v1-5/stable-diffusion-v1-5", "/nonexistent/sd15"])
def test_a_model_that_cannot_load_is_said_once_before_any_task(label_studio, project, tmp_path, model):
    # The default SD 1.5 hub id without network (an empty hub cache: HF_HUB_OFFLINE is set), and a
    # folder that does not exist, over the 41-task project.
    client, project_id = project
    env = _env(tmp_path, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=TOKEN, HF_HOME=str(tmp_path / "hub"))
    before = _predictions_per_task(client, project_id)
    done = _run(["--project", str(project_id), "--model", model, "--report", "report.json"], tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count(model) >= 1 and done.stderr.count("seediff prelabel: ") == 1, done.stderr
    assert "--model" in done.stderr or "existing folder" in done.stderr  # the fix, or what a model may be
    assert "Traceback" not in done.stderr and "task " not in done.stderr  # no task was tried
    assert not (tmp_path / "report.json").exists() and _predictions_per_task(client, project_id) == before


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_ray_prelabels_a_real_project_with_two_actors_and_a_local_run_then_skips_it(label_studio, tmp_path):
    pytest.importorskip("ray")
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=label_studio, api_key=TOKEN)
    project_id = client.projects.create(title="seediff prelabel on ray", label_config=CONFIG).id
    files = {f"f{i}": (f"scene{i}.png", _png(TEST_SEEDS[300 + i]), "image/png") for i in range(10)}
    files["broken"] = ("broken.png", b"\x89PNG\r\n\x1a\n not an image", "image/png")
    requests.post(f"{label_studio}/api/projects/{project_id}/import", files=files,
                  headers={"Authorization": f"Token {TOKEN}"}, timeout=120).raise_for_status()
    env = _env(tmp_path, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=TOKEN)
    done = _run(["--project", str(project_id), "--ray", "--workers", "2", "--batch-size", "3", "--report", "ray.json"],
                tmp_path, env)
    assert done.returncode == 1 and (tmp_path / "ray.json").is_file(), done.stderr[-3000:]
    report = json.loads((tmp_path / "ray.json").read_text())
    assert (report["done"], report["skipped"], report["failed"]) == (10, 0, 1)
    assert "broken.png" in report["failures"][0]["reason"]
    stored = _predictions_per_task(client, project_id)
    assert stored.pop("broken.png") == []
    assert all(versions == [report["model_version"]] for versions in stored.values()), stored
    again = _run(["--project", str(project_id), "--report", "local.json"], tmp_path, env)
    local = json.loads((tmp_path / "local.json").read_text())
    assert local["model_version"] == report["model_version"]  # one version, whichever engine ran it
    assert (local["done"], local["skipped"], local["failed"]) == (0, 10, 1), again.stderr
