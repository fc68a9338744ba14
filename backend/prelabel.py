"""Bulk pre-labelling: a whole Label Studio project, or a tasks file / image folder, through the
backend's own model class, so every prediction is the one ``/predict`` would return.

Label Studio is the source of truth. Tasks that already hold a prediction of the current
``model_version`` are skipped, and each chunk of predictions is imported in one request, so a run
killed at any moment and started again finishes the project with no task lost and none predicted
twice. A pipeline, not a loop: two chunks are in flight (the next chunk's images download while the
model works on this one's) and uploads run on their own thread.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seediff_core import ModelNotFoundError

from .errors import Unavailable
from .model import SeediffBackend
from .runtime import Runtime
from .settings import JOB_SECONDS_ENV, BackendSettings

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


class UsageError(Exception):
    """A mistake in how the run was asked for (bad project, no token, bad --tasks): exit code 2."""


@dataclass
class Report:
    """What a run did, task by task."""

    model_version: str = ""
    done: list[int | str] = field(default_factory=list)
    skipped: list[int | str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # task id -> reason
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {"model_version": self.model_version, "done": len(self.done), "skipped": len(self.skipped),
                "failed": len(self.failed), "seconds": round(self.seconds, 2),
                "tasks_per_second": round(len(self.done) / self.seconds, 3) if self.seconds else None,
                "failures": [{"task": k, "reason": v} for k, v in self.failed.items()]}

    def table(self) -> str:
        rate = f"{len(self.done) / self.seconds:.2f} tasks/s" if self.seconds and self.done else "-"
        rows = [("model version", self.model_version), ("predicted", len(self.done)), ("skipped", len(self.skipped)),
                ("failed", len(self.failed)), ("time", f"{self.seconds:.1f} s ({rate})")]
        lines = [f"{name:<14} {value}" for name, value in rows]
        lines += [f"  task {task}: {reason}" for task, reason in list(self.failed.items())[:20]]
        if len(self.failed) > 20:
            lines.append(f"  ... {len(self.failed) - 20} more in the report")
        return "\n".join(lines)


def parse_task_ids(text: str) -> list[int]:
    """"1,2,5-9" -> [1, 2, 5, 6, 7, 8, 9].

    Raises:
        UsageError: not a comma-separated list of ids and ranges.
    """
    ids: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        try:
            if "-" in part:
                start, stop = (int(v) for v in part.split("-", 1))
                if stop < start:
                    raise ValueError
                ids.extend(range(start, stop + 1))
            else:
                ids.append(int(part))
        except ValueError:
            raise UsageError(f"--tasks {text!r}: expected ids and ranges such as 1,2,5-9") from None
    return ids


class Prelabeler:
    """Predicts chunks of tasks with ``SeediffBackend`` and reports every task's outcome.

    Args:
        settings (`BackendSettings`): as the backend reads them (env + flags).
        label_config (`str`): the project's labeling config.
        extra_params (`dict`): pipeline settings and prompt words, as a connection's "Extra params".
        chunk (`int`): tasks per model call and per upload.
        load_model (`bool`): False to only validate the settings and name the model version.

    The model starts loading in the background; ``wait_for_model`` says, once, if it cannot.
    """

    def __init__(self, settings: BackendSettings, label_config: str, extra_params: dict[str, Any] | None = None,
                 chunk: int = 8, project_id: str = "prelabel", load_model: bool = True):
        if JOB_SECONDS_ENV not in os.environ:  # a server's per-job limit; an admin's own run goes to the end
            settings = dataclasses.replace(settings, job_seconds=None)
        self.settings = settings
        try:
            self.runtime = Runtime(settings, load_model, log_load_failure=False)
        except ModelNotFoundError as exc:  # e.g. a folder that does not exist
            raise UsageError(str(exc)) from None
        self.chunk = max(1, chunk)
        try:
            self.model = SeediffBackend(project_id, label_config, self.runtime.state, extra_params or {},
                                        runtime=self.runtime)
            self.runtime.check_request(self.model._targets(), self.runtime.overrides(self.model.extra_params))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    def wait_for_model(self) -> None:
        """Wait until the model is loaded and check the settings' cost on it.

        Raises:
            UsageError: the model cannot be loaded (the message says why and how to fix it), or one
                image would cost more than the limits allow; nothing was predicted.
        """
        if self.runtime.model is None:
            return
        try:
            self.runtime.model.get(timeout=None)
        except Unavailable:
            raise UsageError(f"cannot load the model: {self.runtime.model.exception}") from None
        try:
            self.runtime.check_request(self.model._targets(), self.runtime.overrides(self.model.extra_params))
        except ValueError as exc:
            raise UsageError(str(exc)) from exc

    @property
    def model_version(self) -> str:
        return self.model.model_version

    def run(self, tasks: Iterable[dict], upload, progress=None, skip=lambda task: False) -> Report:
        """Predict ``tasks`` (those ``skip`` does not drop) and hand each chunk's predictions to
        ``upload(list[(task, prediction)])`` on the upload thread. ``progress(done, skipped, failed)``
        is called after each chunk."""
        report = Report(self.model_version)
        started = time.perf_counter()
        lock = threading.Lock()

        def note(kind: str, n: int = 1) -> None:
            if progress is not None:
                progress(kind, n, report)

        def predict(chunk: list[dict]) -> list[dict | Exception]:
            try:
                return self.model.predict_outcomes(chunk)
            except Exception as exc:  # the whole chunk (e.g. the model failed to load): each task fails
                return [exc] * len(chunk)

        def upload_chunk(pairs: list[tuple[dict, dict]]) -> None:
            try:
                upload(pairs)
                with lock:
                    report.done.extend(task.get("id") for task, _ in pairs)
                note("done", len(pairs))
            except Exception as exc:
                with lock:
                    for task, _ in pairs:
                        report.failed[str(task.get("id"))] = f"upload failed: {_reason(exc)}"
                note("failed", len(pairs))

        with ThreadPoolExecutor(2, thread_name_prefix="seediff-chunk") as chunks, \
                ThreadPoolExecutor(1, thread_name_prefix="seediff-upload") as uploads:
            in_flight: list[tuple[list[dict], Future]] = []
            uploaded: list[Future] = []

            def drain(keep: int) -> None:
                while len(in_flight) > keep:
                    batch, future = in_flight.pop(0)
                    pairs = []
                    for task, outcome in zip(batch, future.result()):
                        if isinstance(outcome, Exception):
                            with lock:
                                report.failed[str(task.get("id"))] = _reason(outcome)
                            note("failed")
                        else:
                            pairs.append((task, outcome))
                    if pairs:
                        uploaded.append(uploads.submit(upload_chunk, pairs))

            for batch in _chunks(tasks, self.chunk, skip, report, note):
                in_flight.append((batch, chunks.submit(predict, batch)))
                drain(keep=1)  # the next chunk downloads while this one is segmented
            drain(keep=0)
            for future in uploaded:
                future.result()
        report.seconds = time.perf_counter() - started
        return report


def _chunks(tasks: Iterable[dict], size: int, skip, report: Report, note) -> Iterator[list[dict]]:
    batch: list[dict] = []
    for task in tasks:
        if skip(task):
            report.skipped.append(task.get("id"))
            note("skipped")
            continue
        batch.append(task)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ---------------------------------------------------------------------- Label Studio projects


def connect(settings: BackendSettings):
    """An SDK client for LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY (PAT or legacy token).

    Raises:
        UsageError: either is missing.
    """
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url:
        raise UsageError("LABEL_STUDIO_URL is not set; export LABEL_STUDIO_URL=http://<label studio host>:8080")
    if not settings.api_key:
        raise UsageError("LABEL_STUDIO_API_KEY is not set; export it (Account & Settings > Personal Access Token)")
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.api_key)


def project_config(client, project_id: int) -> str:
    """The project's labeling config.

    Raises:
        UsageError: no such project, or the token is refused.
    """
    from label_studio_sdk.core.api_error import ApiError

    try:
        return client.projects.get(id=project_id).label_config
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise UsageError(f"Label Studio refused the token ({exc.status_code}); check LABEL_STUDIO_API_KEY") from None
        if exc.status_code == 404:
            raise UsageError(f"project {project_id} does not exist at {client._client_wrapper.get_base_url()}; "
                             "check --project") from None
        raise


def project_tasks(client, project_id: int, view: int | None = None, ids: list[int] | None = None,
                  limit: int | None = None) -> Iterator[dict]:
    """The project's tasks (or a view's, or the listed ids), with their predictions' versions."""
    wanted = set(ids) if ids else None
    count = 0
    for task in client.tasks.list(project=project_id, view=view, fields="all", page_size=100):
        raw = task.model_dump(mode="json") if hasattr(task, "model_dump") else dict(task)
        if wanted is not None and raw.get("id") not in wanted:
            continue
        yield raw
        count += 1
        if limit is not None and count >= limit:
            return


def has_version(task: dict, model_version: str) -> bool:
    """Does the task already hold a prediction of ``model_version``?"""
    for prediction in task.get("predictions") or []:
        version = prediction.get("model_version") if isinstance(prediction, dict) else getattr(prediction, "model_version", None)
        if version == model_version:
            return True
    return False


def import_to_project(client, project_id: int):
    """An uploader that imports a chunk of predictions in one request."""

    def upload(pairs: list[tuple[dict, dict]]) -> None:
        client.projects.import_predictions(id=project_id, request=[
            {"task": task["id"], "result": p["result"], "score": p["score"], "model_version": p["model_version"]}
            for task, p in pairs])

    return upload


# ---------------------------------------------------------------------- files


def tasks_from(source: Path) -> tuple[list[dict], Path | None]:
    """Tasks from a Label Studio tasks JSON, or one task per image of a folder; for a folder, also
    the folder, to serve as the local-files document root (images are named as Label Studio's local
    storage names them, ``/data/local-files/?d=<name>``, so the output imports as it is).

    Raises:
        UsageError: not a readable tasks file or folder of images.
    """
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise UsageError(f"{source} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        tasks = [{"id": i + 1, "data": {"image": f"/data/local-files/?d={p.relative_to(source).as_posix()}"}}
                 for i, p in enumerate(images)]
        return tasks, source
    try:
        loaded = json.loads(source.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UsageError(f"--from {source}: not a readable tasks JSON ({exc})") from None
    loaded = loaded if isinstance(loaded, list) else [loaded]
    tasks = []
    for i, item in enumerate(loaded):
        if not isinstance(item, dict):
            raise UsageError(f"--from {source}: entry {i} is not a JSON object")
        task = dict(item) if "data" in item else {"data": dict(item)}
        task.setdefault("id", i + 1)
        tasks.append(task)
    return tasks, None


def default_config(labels: list[str], tag: str = "BrushLabels") -> str:
    """A labeling config for file runs given only labels."""
    inner = "".join(f'<Label value="{label}"/>' for label in labels)
    return f'<View><Image name="image" value="$image"/><{tag} name="label" toName="image">{inner}</{tag}></View>'

