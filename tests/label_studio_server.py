"""A real Label Studio on 127.0.0.1 for the tests (label-studio 1.23.2 from PyPI, in its own venv),
shared by every test of a session through the ``label_studio`` fixture in conftest.py.

Label Studio comes from SEEDIFF_LABEL_STUDIO (its ``label-studio`` executable) or the repository's
``.ls-venv`` (which ``.ci/run`` prepares; created here if missing). SQLite in a temporary folder; the
admin's legacy token is ``TOKEN``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "seediff-e2e-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_studio_executable() -> Path:
    given = os.environ.get("SEEDIFF_LABEL_STUDIO")
    if given:
        return Path(given)
    venv = ROOT / ".ls-venv"
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "label-studio==1.23.2"], check=True, timeout=1800)
    return exe


def wait(url: str, ready, timeout: float, process: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the process exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200 and ready(response.json()):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start_label_studio(home: Path):
    """Start Label Studio with its data under ``home``; yields its URL, stops it afterwards."""
    port = free_port()
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(home / "data"),
        LABEL_STUDIO_USERNAME="admin@example.com",
        LABEL_STUDIO_PASSWORD="seediff-e2e-password",
        LABEL_STUDIO_USER_TOKEN=TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        # The backend runs on 127.0.0.1: Label Studio's SSRF guards would refuse it.
        ML_BLOCK_LOCAL_IP="false",
        SSRF_PROTECTION_ENABLED="false",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
    )
    log = home / "label-studio.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(label_studio_executable()), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=home,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait(f"{url}/health", lambda body: body.get("status") == "UP", 600, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def start_backend(label_studio: str, api_key: str, home: Path):
    """``seediff serve`` on shapes-world (SEEDIFF_E2E_MODEL to debug with another), talking to
    ``label_studio`` with ``api_key``; yields (url, log path), stops it afterwards."""
    import shutil

    port = free_port()
    env = dict(os.environ, LABEL_STUDIO_URL=label_studio, LABEL_STUDIO_API_KEY=api_key, MODEL_DIR=str(home / "models"),
               LOG_LEVEL="INFO", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1")
    log = home / "backend.log"
    exe = shutil.which("seediff", path=str(Path(sys.executable).parent)) or "seediff"
    with open(log, "w") as out:
        model = os.environ.get("SEEDIFF_E2E_MODEL", "shapes-world")
        process = subprocess.Popen([exe, "serve", "--host", "127.0.0.1", "--port", str(port), "--model", model],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(f"{url}/health", lambda body: body.get("model_state") == "ready", 300, process, log)
        yield url, log
    finally:
        process.terminate()
        process.wait(30)


def data_manager_scores(label_studio: str, project_id: int, expected: int, timeout: float = 60) -> dict[int, float | None]:
    """Task id -> the "Prediction score" the Data Manager lists (its task list API), polled until
    ``expected`` tasks have one: the backend syncs the project's model version in the background."""
    deadline = time.time() + timeout
    while True:
        response = requests.get(f"{label_studio}/api/tasks", params={"project": project_id, "fields": "all",
                                                                     "page_size": 100},
                                headers={"Authorization": f"Token {TOKEN}"}, timeout=30)
        response.raise_for_status()
        scores = {t["id"]: t.get("predictions_score") for t in response.json()["tasks"]}
        if sum(v is not None for v in scores.values()) >= expected or time.time() > deadline:
            return scores
        time.sleep(1)
