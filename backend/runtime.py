"""What one backend process shares across requests: settings, the model (loaded once, in the
background), the inference worker, the image fetcher, per-project state and counters."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

from seediff_core import CostLimitError
from seediff_core.hints import Hints
from seediff_core.images import ImageError, load_image
from seediff_core.models import resolve_source
from seediff_core.pipeline import resolve_config

from . import limits
from .controls import ImageTarget
from .errors import RequestError, Unavailable
from .fetch import FetchError, ImageFetcher
from .project_version import ProjectVersions
from .settings import BackendSettings
from .state import ProjectState
from .worker import BATCH, INTERACTIVE, InferenceWorker, JobStopped, ModelHolder, QueueFull

log = logging.getLogger(__name__)
MODEL_WAIT_SECONDS = 30.0
PROMPT_KEYS = ("prompts", "label_prompts")  # extra params: {"prompts": {"Cat": ["cat", "kitten"]}}


@dataclass(frozen=True)
class ProjectOptions:
    settings: dict[str, Any]
    words: dict[str, list[str]]
    everything: bool = False


@dataclass
class Metrics:
    started: float = field(default_factory=time.time)
    tasks_ok: int = 0
    tasks_failed: int = 0
    requests: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, timings: dict[str, float]) -> None:
        with self.lock:
            self.tasks_ok += 1
            for stage, seconds in timings.items():
                self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def failed(self) -> None:
        with self.lock:
            self.tasks_failed += 1

    def to_json(self) -> dict[str, Any]:
        with self.lock:
            mean = {k: round(v / self.tasks_ok, 4) for k, v in self.stage_seconds.items()} if self.tasks_ok else {}
            return {"uptime_s": round(time.time() - self.started, 1), "requests": self.requests,
                    "tasks_ok": self.tasks_ok, "tasks_failed": self.tasks_failed, "mean_stage_seconds": mean}


class Runtime:
    """``load_model=False`` builds everything but the model (to name a model version without it);
    ``log_load_failure=False`` leaves saying that the model failed to load to the caller."""

    def __init__(self, settings: BackendSettings, load_model: bool = True, log_load_failure: bool = True):
        self.settings = settings
        self.state = ProjectState(settings.model_dir / "cache.db")
        self.fetcher = ImageFetcher(settings)
        self.project_versions = ProjectVersions(self.fetcher.base, self.fetcher.tokens, self.state, settings.fetch_timeout)
        self.worker = InferenceWorker(settings.queue_size, settings.job_seconds)
        self.metrics = Metrics()
        self._fetch_pool = ThreadPoolExecutor(4, thread_name_prefix="seediff-fetch")
        # Settings (library defaults < the model folder's seediff.json < env) are known before the
        # weights load, so /setup can answer with a model version at once.
        self.model_folder = resolve_source(settings.model)[1]
        self.base_config = self.config(settings.pipeline)
        self.model = ModelHolder(self._load, log_load_failure) if load_model else None

    def config(self, params: dict[str, Any]):
        return resolve_config(self.settings.model, self.model_folder, {**self.settings.pipeline, **params})

    def shutdown(self) -> None:
        """The server is stopping: the running job stops before its next UNet call, queued jobs are
        refused (503), so the process exits within its grace period."""
        self.worker.stop()

    def check_request(self, targets: list[ImageTarget], options: "ProjectOptions", tasks: int | None = None) -> None:
        """RequestError (400, before any work) when the project's labels, one image's cost or, given
        ``tasks``, the request's total exceed the limits (``backend.limits``)."""
        limits.check_request(self, targets, options, tasks)

    def _load(self):
        from seediff_core.models import load_model
        from seediff_core.pipeline import Segmenter

        loaded = load_model(self.settings.model, self.base_config.device, self.base_config.dtype)
        return Segmenter(loaded, **self.settings.pipeline)

    # ------------------------------------------------------------------ per project

    def overrides(self, extra_params: dict[str, Any] | None) -> "ProjectOptions":
        """A project's options from its extra params: pipeline settings, prompt words per label
        ({"prompts": {"Cat": ["cat", "kitten"]}}), and {"segment_everything": true} for DiffSeg's
        unlabelled segments.

        Raises:
            ValueError: an unknown or invalid setting (the message lists the valid ones).
        """
        if extra_params is not None and not isinstance(extra_params, dict):
            raise RequestError("extra_params", "must be a JSON object", 'e.g. {"timestep": 300}')
        params = dict(extra_params or {})
        words: dict[str, list[str]] = {}
        for key in PROMPT_KEYS:
            given = params.pop(key, None) or {}
            if not isinstance(given, dict):
                raise RequestError(f"extra_params.{key}", "must map each label to its prompt words",
                                   f'e.g. {{"{key}": {{"Cat": ["cat", "kitten"]}}}}')
            for label, value in given.items():
                if not (isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise RequestError(f"extra_params.{key}.{label}", "must be a word or a list of words",
                                       f'e.g. {{"{label}": ["{label.lower()}"]}}')
                words[str(label)] = [value] if isinstance(value, str) else list(value)
        if "steps" in params:
            params["inversion_steps"] = params.pop("steps")
        if "t" in params:
            params["timestep"] = params.pop("t")
        params.pop("model", None)  # one model per process: set SEEDIFF_MODEL instead
        everything = params.pop("segment_everything", False)
        if not isinstance(everything, bool):
            raise RequestError("extra_params.segment_everything", "must be true or false")
        if everything:
            params.setdefault("method", "diffseg")
        try:
            self.config(params)  # validates
        except ValueError as exc:
            name = next((k for k in params if str(exc).startswith((f"{k}=", f"{k} "))), None)  # "k=5 is ...", "k has ..."
            raise RequestError(f"extra_params.{name}" if name else "extra_params", str(exc),
                               "fix or remove the setting in the model's Extra params") from None
        return ProjectOptions(params, words, everything)

    def model_version(self, extra_params: dict[str, Any] | None) -> str:
        """Names the method, model and settings, so Label Studio re-predicts when any changes."""
        options = self.overrides(extra_params)
        config = self.config(options.settings).to_dict()
        for key in ("device", "dtype", "model", "attention_chunk", "latent_cache_size", "batch_size"):
            config.pop(key)
        digest = hashlib.sha256(json.dumps([config, options.words, options.everything], sort_keys=True).encode()).hexdigest()[:8]
        model = self.settings.model.rstrip("/").rsplit("/", 1)[-1]
        mode = {"invert": f"inv{config['inversion_steps']}", "noise": "noise", "clean": "clean"}[config["noise_mode"]]
        # "seediff-shapes-world-...": the product's name, then the method's unless it is SeeDiff itself.
        method = "" if config["method"] == "seediff" else f"{config['method']}-"
        return f"seediff-{method}{model}-t{config['timestep']}-{mode}-{digest}"

    # ------------------------------------------------------------------ work

    def segment_tasks(self, tasks: list[dict], targets: list[ImageTarget], options: "ProjectOptions") -> list[list | Exception]:
        """Per task: [(target, SegmentationResult), ...], or the exception that failed that task.

        Images download in parallel and go to the model worker in batches of ``batch_size`` images of
        one Image object as they arrive (one UNet call per batch); a batch that fails is retried image
        by image, so one bad image fails only its own task.

        Raises:
            QueueFull: the worker cannot take this many tasks now (nothing was started).
            Unavailable: the model failed to load, or is still loading.
        """
        segmenter = self.model.get(MODEL_WAIT_SECONDS)
        jobs = [(i, target) for i in range(len(tasks)) for target in targets]
        self.worker.ensure_room(len(jobs))
        outcomes: list[list | Exception] = [[] for _ in tasks]
        downloads = {self._fetch_pool.submit(self._fetch, tasks[i], target): (i, target) for i, target in jobs}
        batch_size = 1 if options.everything else self.config(options.settings).batch_size
        ready: dict[str, list[tuple[int, ImageTarget, Any]]] = {}  # per Image object, images awaiting a batch
        pending = []
        stop = self.worker.should_stop  # asked before every UNet call: a job past its time, or a shutdown

        def job_for(group: list[tuple[int, ImageTarget, Any]]):
            if options.everything:
                return lambda: [segmenter.segment_everything(image, should_stop=stop, **options.settings)
                                for _, _, image in group]
            target = group[0][1]
            labels, words = target.labels, {**target.words, **options.words}
            images = [image for _, _, image in group]
            return lambda: segmenter.segment_batch(images, labels, words=words, should_stop=stop, **options.settings)

        def submit(group: list[tuple[int, ImageTarget, Any]]) -> None:
            pending.append((self.worker.submit([job_for(group)], BATCH)[0], group))

        for done in as_completed(downloads):
            i, target = downloads[done]
            if isinstance(outcomes[i], Exception):
                continue
            try:
                image = done.result()
                waiting = ready.setdefault(target.object_name, [])
                waiting.append((i, target, image))
                if len(waiting) == batch_size:  # images go to the model as soon as a batch is full
                    submit(ready.pop(target.object_name))
            except QueueFull:
                raise
            except Exception as exc:
                outcomes[i] = exc
        for group in ready.values():
            submit(group)
        for future, group in pending:
            try:
                results = future.result()
            except Unavailable:  # shutting down: this request gets a 503, not one error per task
                raise
            except Exception as exc:
                results = [exc] * len(group)
                # Find the image that failed the batch: each alone, so the others still get masks. A
                # batch stopped at its time limit is not run again image by image, which could take longer.
                if len(group) > 1 and not isinstance(exc, JobStopped):
                    results = []
                    for member in group:
                        try:
                            results.append(self.worker.submit([job_for([member])], BATCH)[0].result()[0])
                        except Exception as alone:
                            results.append(alone)
            for (i, target, _), result in zip(group, results):
                if isinstance(result, Exception):
                    outcomes[i] = result
                    continue
                if not isinstance(outcomes[i], Exception):
                    outcomes[i].append((target, result))
                self.metrics.record(result.timings)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception):
                self.metrics.failed()
                ours = isinstance(outcome, (RequestError, ImageError, FetchError, CostLimitError, JobStopped))
                log.error("task %s failed: %s: %s", tasks[i].get("id"), type(outcome).__name__, outcome,
                          exc_info=None if ours else outcome)  # a bug of ours: its traceback
        return outcomes

    def segment_interactive(self, task: dict, target: ImageTarget, hints: dict[str, Hints], options: "ProjectOptions"):
        """One task, only the hinted labels, ahead of queued batch work."""
        segmenter = self.model.get(MODEL_WAIT_SECONDS)
        image = self._fetch(task, target)
        labels = list(hints)
        settings = {**options.settings, "method": "seediff"} if options.everything else options.settings
        words = {**target.words, **options.words}
        job = lambda: segmenter.segment(image, labels, hints=hints, words=words,  # noqa: E731
                                        should_stop=self.worker.should_stop, **settings)
        result = self.worker.submit([job], INTERACTIVE)[0].result()
        self.metrics.record(result.timings)
        return result

    def _fetch(self, task: dict, target: ImageTarget):
        data = task.get("data")
        if not isinstance(data, dict) or target.data_key not in data:
            raise RequestError("data", f"task {task.get('id')} has no data field {target.data_key!r} for Image "
                               f"{target.object_name!r}", f'send {{"data": {{"{target.data_key}": "<image URL>"}}}}')
        reference = data[target.data_key]
        raw = self.fetcher.fetch(reference, task.get("id"))
        try:
            return load_image(raw, max_pixels=self.settings.max_pixels)
        except ImageError as exc:  # name the image by its reference, not "bytes"
            shown = reference if not str(reference).startswith("data:") else "data: URL"
            raise ImageError(f"{shown}: {str(exc).split(': ', 1)[-1]}") from exc
