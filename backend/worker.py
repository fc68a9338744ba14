"""One thread runs every model call; requests wait in a bounded priority queue.

The model is loaded once per process, in the background, so /health answers at once while weights
load. Interactive requests (an annotator waiting on a click) go ahead of batch tasks. When the
queue cannot take a request's tasks, the request is refused at once (503 with Retry-After) rather
than left to time out in Label Studio.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from .errors import Unavailable

log = logging.getLogger(__name__)

INTERACTIVE, BATCH = 0, 1
LOADING_RETRY_SECONDS, FAILED_RETRY_SECONDS = 10, 60


class QueueFull(Unavailable):
    def __init__(self, retry_after: int):
        super().__init__(f"the model's queue is full; retry in {retry_after} s", retry_after)


class InferenceWorker:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._pending = 0
        self._seconds = 0.0  # running mean of a job's duration, for Retry-After
        self.stats = {"completed": 0, "failed": 0, "rejected": 0}
        self._thread = threading.Thread(target=self._run, name="seediff-worker", daemon=True)
        self._thread.start()

    def ensure_room(self, count: int) -> None:
        """Raise QueueFull (with a Retry-After estimate) unless ``count`` more jobs fit now."""
        with self._lock:
            self._check(count)

    def submit(self, jobs: list[Callable[[], Any]], priority: int = BATCH) -> list[Future]:
        """Queue all ``jobs`` or none. Raises QueueFull when batch jobs do not fit; interactive jobs
        (an annotator waiting on a click) are always taken, ahead of the batch work."""
        with self._lock:
            if priority != INTERACTIVE:
                self._check(len(jobs))
            self._pending += len(jobs)
        futures = []
        for job in jobs:
            future: Future = Future()
            self._queue.put((priority, next(self._order), job, future))
            futures.append(future)
        return futures

    def _check(self, count: int) -> None:
        if self._pending + count > self.capacity:
            self.stats["rejected"] += count
            raise QueueFull(max(1, int((self._pending + 1) * max(self._seconds, 0.5))))

    @property
    def pending(self) -> int:
        return self._pending

    def _run(self) -> None:
        while True:
            _, _, job, future = self._queue.get()
            if future.set_running_or_notify_cancel():
                start = time.perf_counter()
                try:
                    future.set_result(job())
                    self.stats["completed"] += 1
                except BaseException as exc:  # reported to the waiting request, never kills the worker
                    future.set_exception(exc)
                    self.stats["failed"] += 1
                elapsed = time.perf_counter() - start
                self._seconds = elapsed if self._seconds == 0 else 0.9 * self._seconds + 0.1 * elapsed
            with self._lock:
                self._pending -= 1


class ModelHolder:
    """Loads the model in a background thread; ``get`` waits for it."""

    def __init__(self, load: Callable[[], Any]):
        self._ready = threading.Event()
        self._value: Any = None
        self.error: str | None = None
        self.loaded_in: float | None = None
        threading.Thread(target=self._load, args=(load,), name="seediff-model-loader", daemon=True).start()

    def _load(self, load: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            self._value = load()
            self.loaded_in = time.perf_counter() - start
            log.info("model ready in %.1f s", self.loaded_in)
        except Exception as exc:  # reported by /health and by every request that needs the model
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("model failed to load: %s", self.error)
        finally:
            self._ready.set()

    @property
    def state(self) -> str:
        if not self._ready.is_set():
            return "loading"
        return "error" if self.error else "ready"

    def get(self, timeout: float | None = None) -> Any:
        """The model; Unavailable while it loads (after ``timeout`` s) or when it failed to load."""
        if not self._ready.wait(timeout):
            raise Unavailable("the model is still loading; retry shortly", LOADING_RETRY_SECONDS)
        if self.error:
            raise Unavailable(f"the model failed to load: {self.error}; fix it and restart the backend "
                              "(GET /health shows the reason)", FAILED_RETRY_SECONDS)
        return self._value
