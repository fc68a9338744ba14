"""Backend settings from the environment, named the way Label Studio's ML backends name them.

Label Studio connection: LABEL_STUDIO_URL (or LABEL_STUDIO_HOST), LABEL_STUDIO_API_KEY (or
LABEL_STUDIO_ACCESS_TOKEN): a Personal Access Token (exchanged for short-lived access tokens) or a
legacy token. LOCAL_FILES_DOCUMENT_ROOT lets local-files images be read from disk.
Server: HOST, PORT (9090), WORKERS (1), THREADS (48), LOG_LEVEL, BASIC_AUTH_USER / BASIC_AUTH_PASS,
MODEL_DIR (caches: downloads, state).
Model: SEEDIFF_MODEL, SEEDIFF_METHOD, SEEDIFF_DEVICE, SEEDIFF_DTYPE, SEEDIFF_SETTINGS (a JSON object
of any pipeline setting), or one setting at a time as SEEDIFF_<NAME> (e.g. SEEDIFF_TIMESTEP=300).
Limits: SEEDIFF_QUEUE_SIZE (tasks waiting for the model, 256), SEEDIFF_FETCH_TIMEOUT (s, 20),
SEEDIFF_MAX_IMAGE_BYTES (50 MB), SEEDIFF_MAX_PIXELS (80 M), SEEDIFF_DOWNLOAD_CACHE_BYTES (1 GB),
SEEDIFF_ALLOWED_HOSTS (comma-separated hosts images may come from besides Label Studio; "*" = any
public host). Cost (README, "Limits"): SEEDIFF_MAX_REQUEST_COST (units per /predict request, 5000),
SEEDIFF_JOB_SECONDS (s one model job may run, 600), and the library's SEEDIFF_MAX_IMAGE_COST and
SEEDIFF_MAX_ATTENTION_GIB.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seediff_core import limits
from seediff_core.config import DEFAULT_MODEL, SeediffConfig

# Units per /predict request (one unit: an SD 1.5 UNet forward at 512 px, ~20 ms on an H100): about
# what an H100 does within Label Studio's 100 s /predict timeout (ML_TIMEOUT_PREDICT), ~430 images at
# SD 1.5's defaults with 4 labels (11.5 units each), more than the queue's 256 tasks, and a Data
# Manager page of 100 tasks even with ADE20K's 150 labels (~36 units each).
DEFAULT_MAX_REQUEST_COST = 5000.0
REQUEST_COST_ENV = "SEEDIFF_MAX_REQUEST_COST"
# Seconds one model job (one UNet batch) may run before it is stopped at its next UNet call: six
# times Label Studio's 100 s /predict timeout, past which the job answers nobody and only keeps the
# one worker from every other project. `seediff prelabel` runs without it unless the env var is set.
DEFAULT_JOB_SECONDS = 600.0
JOB_SECONDS_ENV = "SEEDIFF_JOB_SECONDS"


def _env(*names: str, default: str | None = None) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return value
    return default


@dataclass(frozen=True)
class BackendSettings:
    label_studio_url: str | None = None
    api_key: str | None = None
    local_files_root: Path | None = None
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    model_dir: Path = Path("data/models")
    log_level: str = "INFO"
    host: str = "0.0.0.0"
    port: int = 9090
    workers: int = 1
    threads: int = 48  # request threads mostly wait on the model; enough that a click never waits for one
    model: str = DEFAULT_MODEL
    pipeline: dict[str, Any] = field(default_factory=dict)  # SeediffConfig overrides (method, device, ...)
    queue_size: int = 256
    fetch_timeout: float = 20.0
    max_image_bytes: int = 50 * 2**20
    max_pixels: int = 80_000_000
    download_cache_bytes: int = 2**30
    allowed_hosts: tuple[str, ...] = ()
    max_request_cost: float = DEFAULT_MAX_REQUEST_COST
    job_seconds: float | None = DEFAULT_JOB_SECONDS  # None: jobs run to the end

    @classmethod
    def from_env(cls, **overrides: Any) -> "BackendSettings":
        """Read the environment; ``overrides`` (None values ignored) win, e.g. from command-line flags.
        Overrides named after a pipeline setting (``method``, ``device``, ...) go into ``pipeline``."""
        pipeline = json.loads(_env("SEEDIFF_SETTINGS", default="{}") or "{}")
        if not isinstance(pipeline, dict):
            raise ValueError("SEEDIFF_SETTINGS must be a JSON object, e.g. '{\"timestep\": 300}'")
        for f in dataclasses.fields(SeediffConfig):
            value = _env(f"SEEDIFF_{f.name.upper()}")
            if value is not None and f.name != "model":
                pipeline[f.name] = _parse(value)
        if (steps := _env("SEEDIFF_STEPS")) is not None:
            pipeline["inversion_steps"] = int(steps)
        url = _env("LABEL_STUDIO_URL", "LABEL_STUDIO_HOST")
        root = _env("LOCAL_FILES_DOCUMENT_ROOT", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
        values: dict[str, Any] = dict(
            label_studio_url=url.rstrip("/") if url else None,
            api_key=_env("LABEL_STUDIO_API_KEY", "LABEL_STUDIO_ACCESS_TOKEN"),
            local_files_root=Path(root) if root else None,
            basic_auth_user=_env("BASIC_AUTH_USER"),
            basic_auth_pass=_env("BASIC_AUTH_PASS"),
            model_dir=Path(_env("MODEL_DIR", default="data/models")),
            log_level=_env("LOG_LEVEL", default="INFO").upper(),
            host=_env("HOST", default="0.0.0.0"),
            port=int(_env("PORT", default="9090")),
            workers=int(_env("WORKERS", default="1")),
            threads=int(_env("THREADS", default="48")),
            model=_env("SEEDIFF_MODEL", default=DEFAULT_MODEL),
            pipeline=pipeline,
            queue_size=int(_env("SEEDIFF_QUEUE_SIZE", default="256")),
            fetch_timeout=float(_env("SEEDIFF_FETCH_TIMEOUT", default="20")),
            max_image_bytes=int(_env("SEEDIFF_MAX_IMAGE_BYTES", default=str(50 * 2**20))),
            max_pixels=int(_env("SEEDIFF_MAX_PIXELS", default="80000000")),
            download_cache_bytes=int(_env("SEEDIFF_DOWNLOAD_CACHE_BYTES", default=str(2**30))),
            allowed_hosts=tuple(h.strip().lower() for h in (_env("SEEDIFF_ALLOWED_HOSTS", default="") or "").split(",") if h.strip()),
            max_request_cost=_positive(REQUEST_COST_ENV, DEFAULT_MAX_REQUEST_COST),
            job_seconds=_positive(JOB_SECONDS_ENV, DEFAULT_JOB_SECONDS),
        )
        pipeline_fields = {f.name for f in dataclasses.fields(SeediffConfig)} - {"model"}
        for key, value in overrides.items():
            if value is None:
                continue
            if key in values:
                values[key] = value
            elif key in pipeline_fields:
                pipeline[key] = value
            else:
                raise ValueError(f"unknown backend setting {key!r}")
        settings = cls(**values)
        SeediffConfig().replace(**settings.pipeline)  # fail at start-up, not at the first request
        limits.max_image_cost(), limits.max_attention_gib()  # ... also for the library's limits
        if bool(settings.basic_auth_user) != bool(settings.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return settings


def _parse(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _positive(name: str, default: float) -> float:
    """A positive number from the environment variable ``name`` (``default`` when unset)."""
    raw = _env(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} must be a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError(f"{name}={raw!r} must be a positive number")
    return value
