"""Load and faults against a live ``seediff serve`` on the shipped model (subprocesses, real HTTP).

Load: 32 concurrent /predict clients; every answer is 200 or 503 + Retry-After, clicks are served
ahead of queued batch work, memory, threads and open files stay flat. Faults: kill -9 mid-batch and
restart; a damaged or deleted state database; a download cache at its limit.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import sqlite3
import threading
import time

import pytest
import requests
from PIL import Image

from benchmarks.load import CONFIG, gunicorn_worker_pid, run_load, start_server
from fake_http import FakeHTTPServer
from seediff_core.scenes import make_scene, render


def _stop(server, sig=signal.SIGTERM) -> None:
    for pid in (gunicorn_worker_pid(server), server.pid):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    server.wait(30)


def _check_load(figures: dict) -> None:
    print(figures)
    statuses = figures["statuses"]
    assert set(statuses) <= {"200", "503"}, statuses
    assert statuses.get("200", 0) > 0 and figures["missing_retry_after"] == 0
    assert figures["interactive_latency"]["median_s"] < figures["batch_latency"]["median_s"] / 2
    assert figures["rss_growth_mb"] < 100
    assert figures["end"]["threads"] <= figures["after_warmup"]["threads"] + 4
    assert figures["end"]["open_files"] <= figures["after_warmup"]["open_files"] + 8


@pytest.fixture
def loaded_server(tmp_path):
    server, url = start_server(tmp_path, queue_size=16)  # half the clients: some must get 503
    yield url, gunicorn_worker_pid(server)
    _stop(server)


def test_load_short(loaded_server):
    url, pid = loaded_server
    _check_load(run_load(url, pid, clients=32, seconds=12, warmup=5))


@pytest.mark.slow
def test_load_two_minutes(loaded_server):
    url, pid = loaded_server
    _check_load(run_load(url, pid, clients=32, seconds=120, warmup=15))


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render(make_scene(seed), 128).image).save(buffer, "PNG")
    return buffer.getvalue()


def test_kill_9_mid_batch_then_restart(tmp_path, monkeypatch):
    images = {f"/data/upload/1/{n}.png": _png(n) for n in range(12)}

    def routes(path, headers):
        if path in images:
            time.sleep(0.05)  # downloads overlap the kill
            return 200, {"Content-Length": str(len(images[path]))}, images[path]
        return 404, {}, b""

    ls = FakeHTTPServer(routes)
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "legacy-key")
    tasks = [{"id": n, "data": {"image": path}} for n, path in enumerate(images)]
    body = {"tasks": tasks, "project": "5.1", "label_config": CONFIG}
    server, url = start_server(tmp_path)
    version = requests.post(f"{url}/setup", json={"project": "5.1", "schema": CONFIG, "extra_params": {"timestep": 120}},
                            timeout=30).json()["model_version"]
    threading.Thread(target=lambda: requests.post(f"{url}/predict", json=body, timeout=300), daemon=True).start()
    deadline = time.time() + 60
    while sum(1 for path, _ in ls.seen if path in images) < 6 and time.time() < deadline:
        time.sleep(0.02)
    _stop(server, signal.SIGKILL)  # the worker and the master, mid-batch
    cache = tmp_path / "downloads"
    entries = [p for p in cache.iterdir() if p.suffix != ".tmp"] if cache.is_dir() else []
    for entry in entries:  # what survived the kill is whole: each entry's checksum holds
        data = entry.read_bytes()
        assert hashlib.sha256(data[32:]).digest() == data[:32]
    if entries:  # and a torn entry (a disk that lied) is not served
        entries[0].write_bytes(entries[0].read_bytes()[:-50])
    with sqlite3.connect(tmp_path / "cache.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    server, url = start_server(tmp_path)
    try:
        assert requests.get(f"{url}/versions", params={"project": "5"}, timeout=30).json()["model_version"] == version
        response = requests.post(f"{url}/predict", json=body, timeout=300).json()
        assert "errors" not in response and all(r["result"] for r in response["results"])
        assert all(r["model_version"] == version for r in response["results"])
    finally:
        _stop(server)
        ls.close()


def test_a_damaged_or_deleted_state_database_is_rebuilt(tmp_path):
    (tmp_path / "cache.db").write_bytes(b"not a database, a torn copy of one" * 100)
    server, url = start_server(tmp_path)
    try:
        setup = requests.post(f"{url}/setup", json={"project": "3", "schema": CONFIG, "extra_params": {"timestep": 90}}, timeout=30)
        assert setup.status_code == 200 and "-t90-" in setup.json()["model_version"]
        assert list(tmp_path.glob("cache.db.corrupt-*"))  # kept aside, not lost
        (tmp_path / "cache.db").unlink()  # deleted under the running server
        setup = requests.post(f"{url}/setup", json={"project": "3", "schema": CONFIG, "extra_params": {"timestep": 80}}, timeout=30)
        assert setup.status_code == 200 and (tmp_path / "cache.db").is_file()
        assert "-t80-" in requests.get(f"{url}/versions", params={"project": "3"}, timeout=30).json()["model_version"]
    finally:
        _stop(server)


def test_a_full_download_cache_evicts_and_keeps_serving(tmp_path, monkeypatch):
    images = {f"/data/upload/1/{n}.png": _png(n) for n in range(6)}
    ls = FakeHTTPServer(lambda path, headers: (200, {}, images[path]) if path in images else (404, {}, b""))
    limit = 2 * max(len(b) for b in images.values()) + 100
    monkeypatch.setenv("LABEL_STUDIO_URL", ls.url)
    monkeypatch.setenv("SEEDIFF_DOWNLOAD_CACHE_BYTES", str(limit))
    server, url = start_server(tmp_path)
    try:
        tasks = [{"id": n, "data": {"image": path}} for n, path in enumerate(images)]
        for _ in range(2):
            response = requests.post(f"{url}/predict", json={"tasks": tasks, "label_config": CONFIG}, timeout=300).json()
            assert "errors" not in response and all(r["result"] for r in response["results"])
            assert sum(p.stat().st_size for p in (tmp_path / "downloads").iterdir()) <= limit
    finally:
        _stop(server)
        ls.close()
