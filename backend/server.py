"""The Label Studio ML-backend HTTP protocol (label-studio-ml 2.x's routes), on Flask.

GET / and /health answer at once, even while the model loads; POST /setup returns the model version
in well under a second; POST /predict runs batch and interactive predictions through the model's
queue (503 + Retry-After when it is full); POST /webhook answers at once and runs ``fit`` in the
background; GET /metrics reports counters; /versions answers instead of 404.

Run it with ``seediff serve`` or ``gunicorn 'backend.server:create_app()'``.
"""

from __future__ import annotations

import hmac
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, Response, jsonify, request

from . import quality
from .base import TRAIN_EVENTS
from .model import SeediffBackend
from .runtime import Runtime
from .settings import BackendSettings
from .worker import QueueFull

log = logging.getLogger(__name__)


def create_app(settings: BackendSettings | None = None, model_class=SeediffBackend) -> Flask:
    """The WSGI app; one per process, which loads the model once, in the background."""
    settings = settings or BackendSettings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime(settings)
    background = ThreadPoolExecutor(1, thread_name_prefix="seediff-fit")
    app = Flask("seediff")
    app.config["runtime"] = runtime

    def instance(project: str | None, label_config: str | None = None, extra_params=None):
        project_id = str(project or "default").split(".")[0]
        return model_class(project_id, label_config, runtime.state, extra_params, runtime=runtime)

    @app.before_request
    def check_auth():
        if not settings.basic_auth_user:
            return None
        auth = request.authorization
        ok = auth is not None and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
        ok = ok and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode())
        if not ok:
            return Response('{"status":401,"detail":"authentication required"}', 401,
                            {"WWW-Authenticate": 'Basic realm="seediff"', "Content-Type": "application/json"})
        return None

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class=model_class.__name__, model=settings.model,
                       model_state=runtime.model.state, model_error=runtime.model.error, queued=runtime.worker.pending)

    @app.post("/setup")
    def setup():
        data = request.get_json(force=True, silent=True) or {}
        model = instance(data.get("project"), data.get("schema"), data.get("extra_params") or {})
        return jsonify(model_version=model.model_version)

    @app.post("/predict")
    def predict():
        data = request.get_json(force=True, silent=True) or {}
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            return _error(400, "the request has no tasks")
        runtime.metrics.requests += 1
        model = instance(data.get("project"), data.get("label_config"))
        context = (data.get("params") or {}).get("context")
        predictions = model.predict(tasks, context=context)
        return jsonify(results=predictions, model_version=model.model_version)

    @app.post("/webhook")
    def webhook():
        data = request.get_json(force=True, silent=True) or {}
        event = data.get("action")
        if event not in TRAIN_EVENTS:
            return jsonify(status="Unknown event"), 200
        project = (data.get("project") or {}).get("id")
        label_config = (data.get("project") or {}).get("label_config")
        background.submit(_run_fit, instance, project, label_config, event, data)
        return jsonify(status="ok", result="queued"), 201

    @app.get("/metrics")
    def metrics():
        return jsonify(model=settings.model, model_state=runtime.model.state, model_load_seconds=runtime.model.loaded_in,
                       queue={"pending": runtime.worker.pending, "capacity": runtime.worker.capacity, **runtime.worker.stats},
                       quality={project: quality.report(summary) for project, summary in runtime.state.projects_with("quality").items()},
                       **runtime.metrics.to_json())

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        data = request.get_json(force=True, silent=True) or {}
        project = data.get("project") or request.args.get("project")
        version = instance(project).model_version if project else runtime.model_version({})
        return jsonify(versions=[version], model_version=version)

    @app.errorhandler(QueueFull)
    def queue_full(exc: QueueFull):
        response = _error(503, str(exc))
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(TimeoutError)
    def still_loading(exc):
        response = _error(503, f"{exc}; retry shortly")
        response.headers["Retry-After"] = "10"
        return response

    @app.errorhandler(ValueError)
    def bad_request(exc):
        return _error(400, f"{type(exc).__name__}: {exc}")

    @app.errorhandler(Exception)
    def failure(exc):
        if hasattr(exc, "code") and hasattr(exc, "description"):  # werkzeug HTTP errors keep their code
            return _error(exc.code, exc.description)
        log.error("request failed: %s\n%s", exc, traceback.format_exc())
        return _error(500, f"{type(exc).__name__}: {exc}")

    return app


def _run_fit(instance, project, label_config, event, data) -> None:
    try:
        instance(project, label_config).fit(event, data)
    except Exception:
        log.exception("fit failed for %s", event)


def _error(status: int, detail: str) -> Response:
    response = jsonify(status=status, detail=detail)
    response.status_code = status
    return response


def serve(settings: BackendSettings) -> None:
    """Run the app under gunicorn with the settings' host, port, workers and threads."""
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"{settings.host}:{settings.port}", "workers": settings.workers,
                               "threads": settings.threads, "timeout": 0, "loglevel": settings.log_level.lower()}.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    _Gunicorn().run()
