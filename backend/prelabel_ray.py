"""``seediff prelabel --ray``: the same job on Ray Data, from a laptop to a cluster of GPUs.

Stages (a streaming Ray Data pipeline):
1. tasks as a dataset (the driver has already dropped those holding this model version);
2. fetching the images: a CPU ``map_batches`` stage (the backend's own fetcher, with its guards);
3. segmentation: an actor-pool ``map_batches`` stage; each actor loads the model once and predicts
   through the backend's model class, so predictions are the ones ``/predict`` returns;
4. upload: a ``map_batches`` stage importing each batch of predictions into Label Studio (skipped
   for file runs, whose predictions come back to the driver).
Every row carries its task's outcome, so the driver keeps the same report and progress as a local
run. Ray is an optional extra (``pip install 'seediff[ray]'``); nothing else imports this module.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .prelabel import Prelabeler, Report
from .settings import BackendSettings


def _settings_dict(settings: BackendSettings) -> dict[str, Any]:
    values = dict(settings.__dict__)
    values["model_dir"] = str(values["model_dir"])
    values["local_files_root"] = str(values["local_files_root"]) if values["local_files_root"] else None
    return values


def _settings(values: dict[str, Any]) -> BackendSettings:
    from pathlib import Path

    values = dict(values)
    values["model_dir"] = Path(values["model_dir"])
    values["local_files_root"] = Path(values["local_files_root"]) if values["local_files_root"] else None
    values["allowed_hosts"] = tuple(values["allowed_hosts"])
    return BackendSettings(**values)


class FetchImages:
    """Stage 2: each task's image bytes, as a data: URL in the task (so stage 3 reads them through
    the very same path as a live request), or the reason it could not be fetched."""

    def __init__(self, settings: dict[str, Any], label_config: str):
        from label_studio_sdk.label_interface import LabelInterface

        from .controls import parse_targets
        from .fetch import ImageFetcher

        self.fetcher = ImageFetcher(_settings(settings))
        self.keys = [target.data_key for target in parse_targets(LabelInterface(label_config))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tasks, errors, sources = [], [], []
        for text in batch["task"]:
            task = json.loads(text)
            data = dict(task.get("data") or {})
            sources.append(", ".join(str(data[key]) for key in self.keys if key in data))
            try:
                for key in self.keys:
                    if key in data:
                        raw = self.fetcher.fetch(data[key], task.get("id"))
                        data[key] = "data:application/octet-stream;base64," + base64.b64encode(raw).decode()
                task["data"] = data
                errors.append("")
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            tasks.append(json.dumps(task))
        return {"task": np.array(tasks, dtype=object), "error": np.array(errors, dtype=object),
                "source": np.array(sources, dtype=object)}


class Segment:
    """Stage 3, one model per actor."""

    def __init__(self, settings: dict[str, Any], label_config: str, extra_params: dict[str, Any], project_id: str):
        self.job = Prelabeler(_settings(settings), label_config, extra_params, project_id=project_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = list(zip(batch["task"], batch["error"]))
        sources = list(batch["source"])
        todo = [json.loads(task) for task, error in rows if not error]
        outcomes = iter(self.job.model.predict_outcomes(todo) if todo else [])
        predictions, errors = [], []
        for task, error in rows:
            if error:
                predictions.append("")
                errors.append(error)
                continue
            outcome = next(outcomes)
            if isinstance(outcome, Exception):  # named by the task's image, not by the data: URL it travelled as
                predictions.append("")
                errors.append(f"{type(outcome).__name__}: {outcome}".replace("data: URL", sources[len(errors)]))
            else:
                predictions.append(json.dumps(outcome))
                errors.append("")
        ids = [json.loads(task).get("id") for task, _ in rows]
        return {"id": np.array([json.dumps(i) for i in ids], dtype=object),
                "prediction": np.array(predictions, dtype=object), "error": np.array(errors, dtype=object)}


class Upload:
    """Stage 4: import a batch's predictions into the project in one request."""

    def __init__(self, settings: dict[str, Any], project_id: int):
        from .prelabel import connect, import_to_project

        self.upload = import_to_project(connect(_settings(settings)), project_id)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pairs = [({"id": json.loads(i)}, json.loads(p)) for i, p, e in zip(batch["id"], batch["prediction"], batch["error"])
                 if not e]
        errors = list(batch["error"])
        if pairs:
            try:
                self.upload(pairs)
            except Exception as exc:
                errors = [e or f"upload failed: {type(exc).__name__}: {exc}" for e in errors]
        return {**batch, "error": np.array(errors, dtype=object)}


def run_on_ray(settings: BackendSettings, label_config: str, extra_params: dict[str, Any], tasks: Iterable[dict],
               *, project_id: int | None, address: str | None, workers: int, gpus_per_worker: float, batch_size: int,
               skip, progress=None, collect=None) -> Report:
    """Run the pre-labelling on Ray Data (a local Ray when ``address`` is None). ``collect(task_id,
    prediction)`` receives each prediction when there is no project to upload to (file runs)."""
    import ray

    values = _settings_dict(settings)
    version = Prelabeler(settings, label_config, extra_params, load_model=False).model_version  # validates early
    report = Report(version)
    started = time.perf_counter()
    todo = []
    for task in tasks:
        if skip(task):
            report.skipped.append(task.get("id"))
            if progress is not None:
                progress("skipped", 1, report)
        else:
            todo.append({"task": json.dumps(task)})
    if todo:
        # A local Ray gets a CPU slot per actor plus one for fetching and uploading, whatever the core count.
        local = {} if address else {"num_cpus": max(os.cpu_count() or 1, workers + 1)}
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
                 logging_level=logging.WARNING, **local)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command draws its own
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        try:
            dataset = ray.data.from_items(todo).map_batches(
                FetchImages, fn_constructor_kwargs={"settings": values, "label_config": label_config},
                batch_size=batch_size, concurrency=1, num_cpus=0.25)
            dataset = dataset.map_batches(
                Segment, fn_constructor_kwargs={"settings": values, "label_config": label_config,
                                                "extra_params": extra_params,
                                                "project_id": str(project_id or "prelabel")},
                batch_size=batch_size, concurrency=workers, num_gpus=gpus_per_worker,
                num_cpus=0 if gpus_per_worker else 1)
            if project_id is not None:
                dataset = dataset.map_batches(Upload, fn_constructor_kwargs={"settings": values, "project_id": project_id},
                                              batch_size=batch_size, concurrency=1, num_cpus=0.25)
            for batch in dataset.iter_batches(batch_size=None):
                for raw_id, prediction, error in zip(batch["id"], batch["prediction"], batch["error"]):
                    task_id = json.loads(raw_id)
                    if error:
                        report.failed[str(task_id)] = error
                        kind = "failed"
                    else:
                        report.done.append(task_id)
                        kind = "done"
                        if collect is not None:
                            collect(task_id, json.loads(prediction))
                    if progress is not None:
                        progress(kind, 1, report)
        finally:
            if address is None:
                ray.shutdown()
    report.seconds = time.perf_counter() - started
    return report
