"""One thread runs every model call; requests wait in a bounded priority queue.

The model is loaded once per process, in the background, so /health answers at once while weights
load. Interactive requests (an annotator waiting on a click) go ahead of batch tasks. When the
queue cannot take a request's tasks, the request is refused at once (503 with Retry-After) rather
than left to time out in Label Studio.

A running job is stopped before its next UNet call once it has run ``job_seconds`` (it fails with
``JobStopped``) or the server shuts down (``ShuttingDown``, a 503): jobs pass ``should_stop`` to the
segmenter, so one project's job never holds the one worker from the others for longer.
"""

from __future__ import annotations

import itertools
import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from seediff_core import Cancelled

from .errors import Unavailable
from .settings import JOB_SECONDS_ENV

log = logging.getLogger(__name__)

INTERACTIVE, BATCH = 0, 1
LOADING_RETRY_SECONDS, FAILED_RETRY_SECONDS, SHUTDOWN_RETRY_SECONDS = 10, 60, 5


class JobStopped(Exception):
    """A job ran past the per-job time limit and was stopped before its next UNet call."""


class ShuttingDown(Unavailable):
    def __init__(self):
        super().__init__("the server is shutting down; retry in a moment", SHUTDOWN_RETRY_SECONDS)


class QueueFull(Unavailable):
    def __init__(self, retry_after: int):
        super().__init__(f"the model's queue is full; retry in {retry_after} s", retry_after)


class InferenceWorker:
    """Args:
        capacity (`int`): batch jobs that may wait or run at once.
        job_seconds (`float`, *optional*): a running job is stopped before its next UNet call once
            it has run this long (None: never).
    """

    def __init__(self, capacity: int, job_seconds: float | None = None):
        self.capacity = capacity
        self.job_seconds = job_seconds
        self._deadline = math.inf  # of the running job (one at a time), for should_stop
        self._stopping = threading.Event()
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._lock = threading.Lock()
        self._pending = 0
        self._seconds = 0.0  # running mean of a job's duration, for Retry-After
        self.stats = {"completed": 0, "failed": 0, "rejected": 0, "stopped": 0}
        self._thread = threading.Thread(target=self._run, name="seediff-worker", daemon=True)
        self._thread.start()

    def ensure_room(self, count: int) -> None:
        """Raise QueueFull (with a Retry-After estimate) unless ``count`` more jobs fit now."""
        with self._lock:
            self._check(count)

    def submit(self, jobs: list[Callable[[], Any]], priority: int = BATCH) -> list[Future]:
        """Queue all ``jobs`` or none. Raises QueueFull when batch jobs do not fit; interactive jobs
        (an annotator waiting on a click) are always taken, ahead of the batch work. Raises
        ShuttingDown once ``stop`` was called."""
        if self._stopping.is_set():
            raise ShuttingDown()
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

    def should_stop(self) -> bool:
        """For the running job to ask before each UNet call (the segmenter's ``should_stop``): True
        once it has run ``job_seconds`` or the server is shutting down."""
        return self._stopping.is_set() or time.monotonic() > self._deadline

    def stop(self) -> None:
        """Shutting down: the running job stops before its next UNet call, queued and new jobs get
        ShuttingDown (a 503), so the process can exit within its grace period."""
        self._stopping.set()

    def _run(self) -> None:
        while True:
            _, _, job, future = self._queue.get()
            if future.set_running_or_notify_cancel():
                if self._stopping.is_set():
                    future.set_exception(ShuttingDown())
                else:
                    self._execute(job, future)
            with self._lock:
                self._pending -= 1

    def _execute(self, job: Callable[[], Any], future: Future) -> None:
        start = time.perf_counter()
        self._deadline = time.monotonic() + self.job_seconds if self.job_seconds else math.inf
        try:
            future.set_result(job())
            self.stats["completed"] += 1
        except Cancelled as exc:  # asked to stop by should_stop: say which limit stopped it
            self.stats["stopped"] += 1
            if self._stopping.is_set():
                future.set_exception(ShuttingDown())
            elif self.job_seconds:
                future.set_exception(JobStopped(
                    f"stopped after {self.job_seconds:g} s, the most one job may hold the model ({JOB_SECONDS_ENV}), "
                    "before its next UNet call; lower the project's cost (inversion_steps, noise_draws, working_size, "
                    f"labels: README, 'Limits') or raise {JOB_SECONDS_ENV}"))
            else:
                future.set_exception(exc)
        except BaseException as exc:  # reported to the waiting request, never kills the worker
            future.set_exception(exc)
            self.stats["failed"] += 1
        finally:
            self._deadline = math.inf
        elapsed = time.perf_counter() - start
        self._seconds = elapsed if self._seconds == 0 else 0.9 * self._seconds + 0.1 * elapsed


class ModelHolder:
    """Loads the model in a background thread; ``get`` waits for it. ``log_failure=False`` leaves
    reporting a failed load to the caller (a command line says it once, as its error)."""

    def __init__(self, load: Callable[[], Any], log_failure: bool = True):
        self._ready = threading.Event()
        self._value: Any = None
        self._log_failure = log_failure
        self.error: str | None = None
        self.exception: Exception | None = None
        self.loaded_in: float | None = None
        threading.Thread(target=self._load, args=(load,), name="seediff-model-loader", daemon=True).start()

    def _load(self, load: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            self._value = load()
            self.loaded_in = time.perf_counter() - start
            log.info("model ready in %.1f s", self.loaded_in)
        except Exception as exc:  # reported by /health and by every request that needs the model
            self.error, self.exception = f"{type(exc).__name__}: {exc}", exc
            if self._log_failure:
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
