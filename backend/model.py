"""seediff as a Label Studio ML backend model: a thin adapter from tasks to results.

The work (fetching, segmenting, queueing) is in ``Runtime``; the regions are built by the control
classes in ``controls``. This class only maps Label Studio's requests onto them.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from seediff_core.hints import Hints

from . import quality
from .base import LabelStudioMLBase
from .controls import ImageTarget, parse_targets
from .errors import RequestError, Unavailable, task_error_message

log = logging.getLogger(__name__)


class SeediffBackend(LabelStudioMLBase):
    """Pre-labels images with one mask per label of the project's BrushLabels, PolygonLabels or
    BitmaskLabels controls; interactive clicks and boxes refine the clicked label."""

    def __init__(self, *args, runtime, **kwargs):
        self.runtime = runtime
        super().__init__(*args, **kwargs)

    def setup(self) -> None:
        self.set("model_version", self.runtime.model_version(self.extra_params))

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list:
        targets, options = self._targets(), self.runtime.overrides(self.extra_params)
        if context and context.get("result"):
            return [self._interactive(tasks[0], targets, context["result"], options)]
        self.runtime.check_request(targets, options, len(tasks))  # over a limit: 400 before any work
        # A failed task gets an empty list: Label Studio stores nothing for it and keeps the others.
        outcomes = self.predict_outcomes(tasks)
        self.task_errors = {i: task_error_message(o) for i, o in enumerate(outcomes) if isinstance(o, Exception)}
        return [[] if isinstance(o, Exception) else o for o in outcomes]

    def predict_outcomes(self, tasks: list[dict]) -> list[dict | Exception]:
        """Per task, its prediction (as ``predict`` returns it) or the exception that failed it."""
        targets = self._targets()
        options = self.runtime.overrides(self.extra_params)
        outcomes = self.runtime.segment_tasks(tasks, targets, options)
        for task, outcome in zip(tasks, outcomes):
            if not isinstance(outcome, Exception) and not options.everything:
                self.remember(task.get("id"), outcome)
        return [o if isinstance(o, Exception) else self._prediction(o) for o in outcomes]

    def _targets(self) -> list[ImageTarget]:
        if self.label_interface is None:
            raise RequestError("label_config", "no labeling config is known for this project",
                               "call /setup first or send label_config with /predict")
        return parse_targets(self.label_interface)

    def _prediction(self, segmented: list, labelled: bool = False) -> dict:
        everything = not labelled and self.runtime.overrides(self.extra_params).everything
        regions, scores = [], []
        for target, result in segmented:
            scores.append(result.score)
            size = (result.height, result.width)
            for control in target.controls:
                if everything:  # unlabelled segments, each under the control's first label
                    for item in result.masks:
                        regions.extend(control.regions(control.labels[0], item.regions, *size))
                    continue
                for label in control.labels:
                    if label in result.labels:
                        regions.extend(control.regions(label, result[label].regions, *size))
        score = float(np.mean(scores)) if scores else 0.0
        return {"result": regions, "score": round(score, 4), "model_version": self.model_version}

    def fit(self, event: str, data: dict, **kwargs) -> dict | None:
        """No training: compare a submitted annotation with what was predicted for its task."""
        if event not in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            return None
        annotation = data.get("annotation") or {}
        task_id = (data.get("task") or {}).get("id") or annotation.get("task")
        stored = self.get(f"prediction:{task_id}") if task_id is not None else None
        if stored is None:
            return None
        scores = quality.compare(stored, annotation.get("result") or [])
        self.set("quality", quality.accumulate(self.get("quality"), scores, json.loads(stored)["model_version"]))
        return {"task": task_id, "iou": scores}

    def remember(self, task_id, segmented: list) -> None:
        """Keep a small copy of a task's predicted masks, for ``fit`` to compare annotations with."""
        if task_id is None or not segmented:
            return
        (target, result), *_ = segmented
        masks = {m.label: m.mask for m in result.masks}
        self.set(f"prediction:{task_id}", quality.record(result.width, result.height, masks, self.model_version))

    def _interactive(self, task: dict, targets: list[ImageTarget], regions: list[dict], options) -> dict:
        by_name = {t.object_name: t for t in targets}
        hints_from_context(regions, [])  # checks every region's shape before any is used
        target = by_name.get(regions[0].get("to_name"), targets[0])
        hints = hints_from_context(regions, target.labels)
        if not hints:
            log.info("interactive request for task %s carries no usable keypoint or rectangle", task.get("id"))
            return {"result": [], "score": 0.0, "model_version": self.model_version}
        try:
            result = self.runtime.segment_interactive(task, target, hints, options)
        except Unavailable:
            raise
        except Exception as exc:  # this task's image: the answer says why, the server stays up
            log.error("interactive task %s failed: %s: %s", task.get("id"), type(exc).__name__, exc)
            self.task_errors = {0: task_error_message(exc)}
            return []
        return self._prediction([(target, result)], labelled=True)


def hints_from_context(regions: list[dict], labels: list[str]) -> dict[str, Hints]:
    """Keypoints (positive unless ``is_positive`` is false) and rectangles, by the label they carry,
    in fractions of the image. Regions whose label is not one of ``labels`` are ignored."""
    found: dict[str, dict[str, list]] = {}
    for index, region in enumerate(regions):
        field = f"params.context.result[{index}]"
        if not isinstance(region, dict):
            raise RequestError(field, "must be a region object", 'e.g. {"type": "keypointlabels", "value": {...}}')
        kind, value = region.get("type", ""), region.get("value") or {}
        if not isinstance(value, dict):
            raise RequestError(f"{field}.value", "must be an object")
        names = value.get(kind) or value.get("labels") or []
        if not isinstance(names, list):
            raise RequestError(f"{field}.value.{kind}", "must be a list of label names", '["Cat"]')
        label = next((n for n in names if isinstance(n, str) and n in labels), None)
        if label is None:
            continue
        entry = found.setdefault(label, {"positive": [], "negative": [], "boxes": []})
        if kind == "keypointlabels":
            point = (_percent(value, "x", field), _percent(value, "y", field))
            entry["positive" if region.get("is_positive", True) is not False else "negative"].append(point)
        elif kind == "rectanglelabels":
            x, y = _percent(value, "x", field), _percent(value, "y", field)
            _percent(value, "width", field), _percent(value, "height", field)  # both numbers
            x1 = _percent({"x": value["x"] + value["width"]}, "x", field)
            y1 = _percent({"y": value["y"] + value["height"]}, "y", field)
            if x1 > x and y1 > y:
                entry["boxes"].append((x, y, x1, y1))
    return {label: Hints(tuple(e["positive"]), tuple(e["negative"]), tuple(e["boxes"])) for label, e in found.items()}


def _percent(value: dict, key: str, field: str) -> float:
    """value[key], a percentage of the image, as a fraction in 0..1."""
    number = value.get(key)
    if isinstance(number, bool) or not isinstance(number, (int, float)) or number != number:
        raise RequestError(f"{field}.value.{key}", f"must be a number (percent of the image), got {number!r}",
                           'Label Studio sends e.g. {"x": 41.5, "y": 20.0}')
    return min(1.0, max(0.0, float(number) / 100.0))
