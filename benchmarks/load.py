"""Load: N concurrent /predict clients against a live ``seediff serve`` on the shipped model.

Prints every status seen (only 200 and 503 + Retry-After are allowed), requests per second,
batch and interactive latency (interactive clicks must be served ahead of queued batch work), and
the server's resident memory, threads and open files after warm-up and at the end.

    bash tools/dev.sh python benchmarks/load.py --clients 32 --seconds 120
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from seediff_core.scenes import make_scene, render  # noqa: E402

CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
          '<Label value="circle"/><Label value="square"/><Label value="triangle"/><Label value="star"/></BrushLabels></View>')


def _image_url(seed: int, size: int = 128) -> str:
    buffer = io.BytesIO()
    Image.fromarray(render(make_scene(seed), size).image).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _process_figures(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    field = lambda name: int(next(line.split()[1] for line in status.splitlines() if line.startswith(name)))  # noqa: E731
    return {"rss_mb": round(field("VmRSS:") / 1024, 1), "threads": field("Threads:"),
            "open_files": len(os.listdir(f"/proc/{pid}/fd"))}


def start_server(folder: Path, queue_size: int = 64, threads: int = 48) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MODEL_DIR": str(folder), "OMP_NUM_THREADS": "1", "THREADS": str(threads),
           "SEEDIFF_QUEUE_SIZE": str(queue_size), "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")}
    process = subprocess.Popen([sys.executable, "-m", "seediff_core.cli", "serve", "--model", "shapes-world",
                                "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=(folder / "serve.log").open("a"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if requests.get(f"{url}/health", timeout=2).json()["model_state"] == "ready":
                return process, url
        except (requests.RequestException, ValueError):
            time.sleep(0.3)
    process.kill()
    raise RuntimeError(f"the server did not start: {(folder / 'serve.log').read_text()[-2000:]}")


def gunicorn_worker_pid(server: subprocess.Popen) -> int:
    """The process that holds the model: gunicorn's worker, the server process's child."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    return int(children[0]) if children else server.pid


def run_load(url: str, pid: int, clients: int = 32, seconds: float = 120.0, warmup: float = 15.0,
             tasks_per_request: int = 1) -> dict:
    """Hammer ``url`` for ``warmup + seconds``; figures of the measured part (after warm-up)."""
    images = [_image_url(seed) for seed in range(16)]
    stop = threading.Event()
    lock = threading.Lock()
    statuses: Counter = Counter()
    missing_retry_after = 0
    latency: dict[str, list[float]] = {"batch": [], "interactive": []}
    measuring = threading.Event()

    def record(kind: str, response: requests.Response, seconds_taken: float) -> None:
        nonlocal missing_retry_after
        with lock:
            if not measuring.is_set():
                return
            statuses[response.status_code] += 1
            if response.status_code == 503 and not response.headers.get("Retry-After"):
                missing_retry_after += 1
            if response.status_code == 200:
                latency[kind].append(seconds_taken)

    def batch_client(index: int) -> None:
        session, n = requests.Session(), 0
        while not stop.is_set():
            n += 1
            tasks = [{"id": index * 10**6 + n * 10 + k, "data": {"image": images[(index + n + k) % len(images)]}}
                     for k in range(tasks_per_request)]
            started = time.perf_counter()
            try:
                response = session.post(f"{url}/predict", json={"tasks": tasks, "project": f"{1 + index % 4}.1",
                                                                "label_config": CONFIG}, timeout=300)
            except requests.RequestException as exc:
                with lock:
                    if measuring.is_set():
                        statuses[f"connection error: {str(exc)[-120:]}"] += 1
                continue
            record("batch", response, time.perf_counter() - started)
            if response.status_code == 503:
                time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))

    def interactive_client() -> None:
        session = requests.Session()
        click = {"type": "keypointlabels", "to_name": "image", "from_name": "kp", "is_positive": True,
                 "value": {"x": 50.0, "y": 50.0, "keypointlabels": ["circle"]}}
        while not stop.is_set():
            started = time.perf_counter()
            response = session.post(f"{url}/predict", json={
                "tasks": [{"id": 1, "data": {"image": images[0]}}], "project": "1.1", "label_config": CONFIG,
                "params": {"context": {"result": [click]}}}, timeout=300)
            record("interactive", response, time.perf_counter() - started)
            time.sleep(1.0)

    workers = [threading.Thread(target=batch_client, args=(i,), daemon=True) for i in range(clients)]
    workers.append(threading.Thread(target=interactive_client, daemon=True))
    for worker in workers:
        worker.start()
    time.sleep(warmup)
    before = _process_figures(pid)
    measuring.set()
    started = time.perf_counter()
    samples = []
    while time.perf_counter() - started < seconds:
        time.sleep(min(5.0, seconds / 4))
        samples.append(_process_figures(pid))
    measuring.clear()
    elapsed = time.perf_counter() - started
    stop.set()
    for worker in workers:
        worker.join(timeout=300)
    time.sleep(1.0)  # let the server settle before the last sample
    after = _process_figures(pid)
    ok = statuses.get(200, 0)

    def quantiles(values):
        if not values:
            return None
        ordered = sorted(values)
        return {"median_s": round(statistics.median(ordered), 3), "p95_s": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
                "count": len(ordered)}

    return {
        "clients": clients, "seconds": round(elapsed, 1), "statuses": {str(k): v for k, v in statuses.items()},
        "missing_retry_after": missing_retry_after, "requests_per_s": round(sum(v for k, v in statuses.items()) / elapsed, 2),
        "tasks_per_s": round(ok * tasks_per_request / elapsed, 2),
        "batch_latency": quantiles(latency["batch"]), "interactive_latency": quantiles(latency["interactive"]),
        "after_warmup": before, "end": after, "peak_rss_mb": max(s["rss_mb"] for s in samples + [after]),
        "rss_growth_mb": round(after["rss_mb"] - before["rss_mb"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--queue-size", type=int, default=64, help="SEEDIFF_QUEUE_SIZE of the server (small: exercises 503)")
    parser.add_argument("--url", help="an already running server (then --pid names its model process)")
    parser.add_argument("--pid", type=int)
    args = parser.parse_args()
    server = None
    if args.url:
        url, pid = args.url, args.pid
    else:
        server, url = start_server(Path(tempfile.mkdtemp(prefix="seediff-load-")), args.queue_size)
        pid = gunicorn_worker_pid(server)
    try:
        figures = run_load(url, pid, args.clients, args.seconds, args.warmup)
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
    print(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
