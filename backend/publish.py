"""Importing a synthetic dataset (``seediff synth``) into a Label Studio project: images as tasks,
masks as predictions the annotators can correct."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from seediff_core.regions import regions_of

from .controls import parse_targets
from .fetch import TokenProvider
from .settings import BackendSettings

log = logging.getLogger(__name__)
BATCH = 50


def import_dataset(folder: str | Path, project_id: int, settings: BackendSettings | None = None) -> int:
    """Upload the dataset's images to the project and attach each mask as a prediction. Samples
    already imported into this project (recorded in their meta file) are skipped. Returns the
    number imported now.

    Raises:
        ValueError: no LABEL_STUDIO_URL, or the dataset's labels are not in the project's config.
    """
    from label_studio_sdk import LabelStudio
    from label_studio_sdk.label_interface import LabelInterface

    settings = settings or BackendSettings.from_env()
    if not settings.label_studio_url or not settings.api_key:
        raise ValueError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to import into Label Studio")
    folder = Path(folder)
    client = LabelStudio(base_url=settings.label_studio_url, api_key=settings.api_key)
    project = client.projects.get(id=project_id)
    (target, *_) = parse_targets(LabelInterface(project.label_config))
    labels = (folder / "labels.txt").read_text().split()[1:]
    missing = [label for label in labels if label not in target.labels]
    if missing:
        raise ValueError(f"labels {missing} of the dataset are not in the project's config (it has {target.labels})")
    metas = [(p, json.loads(p.read_text())) for p in sorted((folder / "meta").glob("*.json"))]
    todo = [(p, m) for p, m in metas if m.get("label_studio", {}).get("project") != project_id]
    headers = TokenProvider(settings.label_studio_url, settings.api_key, settings.fetch_timeout).header()
    done = 0
    for start in range(0, len(todo), BATCH):
        batch = todo[start : start + BATCH]
        files = {m["name"]: (f"{m['name']}.jpg", (folder / "JPEGImages" / f"{m['name']}.jpg").read_bytes(), "image/jpeg")
                 for _, m in batch}
        response = requests.post(f"{settings.label_studio_url}/api/projects/{project_id}/import", files=files,
                                  headers=headers, timeout=300)
        response.raise_for_status()
        tasks = {}
        for task in client.tasks.list(project=project_id):
            reference = str((task.data or {}).get(target.data_key, ""))
            tasks.setdefault(reference.rsplit("-", 1)[-1], task.id)  # uploads are named <uuid>-<file>
        for path, meta in batch:
            task_id = tasks.get(f"{meta['name']}.jpg")
            if task_id is None:
                log.error("uploaded %s but found no task for it", meta["name"])
                continue
            classes = np.asarray(Image.open(folder / "SegmentationClass" / f"{meta['name']}.png"))
            regions = []
            for control in target.controls:
                for index, label in enumerate(labels, start=1):
                    if label in control.labels:
                        found = regions_of(classes == index, meta["score"])
                        regions.extend(control.regions(label, found, *classes.shape))
            client.predictions.create(task=task_id, result=regions, score=meta["score"],
                                      model_version=f"seediff-synth-{meta['method']}-{Path(meta['model']).name}")
            meta["label_studio"] = {"project": project_id, "task": task_id}
            path.write_text(json.dumps(meta, indent=1))
            done += 1
    return done
