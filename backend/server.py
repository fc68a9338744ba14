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
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import quality
from .base import TRAIN_EVENTS
from .controls import parse_targets
from .errors import RequestError, Unavailable, require_object, require_str
from .model import SeediffBackend
from .openapi import openapi_document
from .runtime import Runtime
from .settings import BackendSettings

log = logging.getLogger(__name__)
TASK_EXAMPLE = '{"tasks": [{"id": 1, "data": {"image": "/data/upload/1/a.png"}}]}'
# After SIGTERM, what a worker process may take to finish its requests before gunicorn kills it
# (gunicorn's default is 30 s): a click or an ordinary batch finishes, a long job is stopped at its
# next UNet call and answered 503, and what is still running is abandoned, well inside the 10 s that
# `docker stop` and most process managers wait before SIGKILL.
SHUTDOWN_GRACE_SECONDS = 5


def create_app(settings: BackendSettings | None = None, model_class=SeediffBackend) -> Flask:
    """The WSGI app; one per process, which loads the model once, in the background."""
    settings = settings or BackendSettings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runtime = Runtime(settings)
    background = ThreadPoolExecutor(1, thread_name_prefix="seediff-fit")
    app = Flask("seediff")
    app.config["runtime"] = runtime
    user = (settings.basic_auth_user or "").encode()
    password = (settings.basic_auth_pass or "").encode()

    def instance(project: str | None, label_config: str | None = None, extra_params=None):
        project_id = str(project or "default").split(".")[0]
        return model_class(project_id, label_config, runtime.state, extra_params, runtime=runtime)

    @app.before_request
    def check_auth():
        if not user:
            return None
        auth = request.authorization
        given_user = (auth.username or "").encode() if auth else b""
        given_password = (auth.password or "").encode() if auth else b""
        # Both compared in full, in constant time, so timing tells nothing about either.
        ok = hmac.compare_digest(given_user, user) & hmac.compare_digest(given_password, password)
        if not ok:
            response = _error(401, "authentication required: send HTTP basic auth with the backend's BASIC_AUTH_USER "
                                   "and BASIC_AUTH_PASS (in Label Studio: the model's Basic Authentication fields)")
            response.headers["WWW-Authenticate"] = 'Basic realm="seediff"'
            return response
        return None

    @app.get("/")
    @app.get("/health")
    def health():
        return jsonify(status="UP", model_class=model_class.__name__, model=settings.model,
                       model_state=runtime.model.state, model_error=runtime.model.error, queued=runtime.worker.pending)

    @app.post("/setup")
    def setup():
        data = _body()
        project = require_str(data.get("project"), "project", '"7.1700000000"', number_ok=True)
        schema = require_str(data.get("schema"), "schema", '"<View>...</View>"')
        extra = require_object(data.get("extra_params"), "extra_params", '{"timestep": 300}')
        model = instance(project, schema, extra)
        # Over a limit: refused here, where Label Studio shows the error when the model is connected.
        # A config seediff cannot label still gets a version; /predict says why it cannot.
        targets = parse_targets(model.label_interface, required=False) if model.label_interface else []
        runtime.check_request(targets, runtime.overrides(model.extra_params))
        return jsonify(model_version=model.model_version)

    @app.post("/predict")
    def predict():
        data = _body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks:
            raise RequestError("tasks", "must be a non-empty array of tasks", f"send e.g. {TASK_EXAMPLE}")
        for index, task in enumerate(tasks):
            require_object(task, f"tasks[{index}]", '{"id": 1, "data": {"image": "..."}}', optional=False)
            if not isinstance(task.get("id"), (int, str, type(None))) or isinstance(task.get("id"), bool):
                raise RequestError(f"tasks[{index}].id", "must be the task's id (a number)", '"id": 1')
        project = require_str(data.get("project"), "project", '"7.1700000000"', number_ok=True)
        label_config = require_str(data.get("label_config"), "label_config", '"<View>...</View>"')
        params = require_object(data.get("params"), "params", '{"context": null}')
        context = require_object(params.get("context"), "params.context", '{"result": [...]}')
        if not isinstance(context.get("result", []), (list, type(None))):
            raise RequestError("params.context.result", "must be an array of regions (keypoints or rectangles)")
        runtime.metrics.requests += 1
        model = instance(project, label_config)
        predictions = model.predict(tasks, context=context or None)
        if not context and any(predictions):  # the Data Manager shows scores of the project's version only
            runtime.project_versions.after_predictions(model.project_id, model.model_version)
        body = {"results": predictions, "model_version": model.model_version}
        if model.task_errors:
            body["errors"] = [{"index": i, "task": tasks[i].get("id"), "error": message}
                              for i, message in sorted(model.task_errors.items())]
        return jsonify(body)

    @app.post("/webhook")
    def webhook():
        data = _body()
        event = require_str(data.get("action"), "action", '"ANNOTATION_CREATED"')
        project = require_object(data.get("project"), "project", '{"id": 7, "label_config": "<View>...</View>"}')
        project_id = require_str(project.get("id"), "project.id", "7", number_ok=True)
        label_config = require_str(project.get("label_config"), "project.label_config", '"<View>...</View>"')
        for key in ("annotation", "task"):
            require_object(data.get(key), key, '{"id": 1, ...}')
        if event not in TRAIN_EVENTS:
            return jsonify(status="Unknown event"), 200
        instance(project_id, label_config)  # a broken config is this request's error, not the background's
        background.submit(_run_fit, instance, project_id, label_config, event, data)
        return jsonify(status="ok", result="queued"), 201

    @app.get("/metrics")
    def metrics():
        return jsonify(model=settings.model, model_state=runtime.model.state, model_load_seconds=runtime.model.loaded_in,
                       queue={"pending": runtime.worker.pending, "capacity": runtime.worker.capacity, **runtime.worker.stats},
                       quality={project: quality.report(summary) for project, summary in runtime.state.projects_with("quality").items()},
                       **runtime.metrics.to_json())

    @app.route("/versions", methods=["GET", "POST"])
    def versions():
        data = _body() if request.method == "POST" else {}
        project = require_str(data.get("project", request.args.get("project")), "project", '"7"', number_ok=True)
        version = instance(project).model_version if project else runtime.model_version({})
        return jsonify(versions=[version], model_version=version)

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())

    @app.errorhandler(RequestError)
    def bad_request(exc: RequestError):
        response = jsonify(status=400, **exc.body())
        response.status_code = 400
        return response

    @app.errorhandler(Unavailable)
    def unavailable(exc: Unavailable):
        response = _error(503, str(exc), {"retry_after": exc.retry_after})
        response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):  # 404, 405, 413 ...: werkzeug's own, as JSON
        response = _error(exc.code or 500, exc.name, {"problem": exc.description})
        for key, value in exc.get_headers():
            if key.lower() == "allow":
                response.headers[key] = value
        return response

    @app.errorhandler(Exception)
    def failure(exc: Exception):
        reference = uuid.uuid4().hex[:12]
        log.exception("request %s failed (%s %s)", reference, request.method, request.path)
        return _error(500, "internal error: the server log has the details", {"reference": reference})

    return app


def _body() -> dict:
    """The request's JSON object (an empty one when there is no body)."""
    if not request.get_data(cache=True):
        return {}
    data = request.get_json(force=True, silent=True)
    if data is None:
        raise RequestError("body", "is not valid JSON", "send a JSON object with Content-Type: application/json")
    return require_object(data, "body", TASK_EXAMPLE)


def _run_fit(instance, project, label_config, event, data) -> None:
    try:
        instance(project, label_config).fit(event, data)
    except Exception:
        log.exception("fit failed for %s", event)


def _error(status: int, error: str, detail: dict | None = None) -> Response:
    response = jsonify(status=status, error=error, detail=detail or {})
    response.status_code = status
    return response


def _stop_jobs_on_sigterm(worker) -> None:
    """gunicorn's post_worker_init hook: on SIGTERM a worker stops taking connections and waits for
    its requests; this also stops the model's running job before its next UNet call (its request
    answers 503), since a job can run for minutes and would only be killed at the grace period's end."""
    runtime = worker.wsgi.config["runtime"]
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        runtime.shutdown()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


def serve(settings: BackendSettings) -> None:
    """Run the app under gunicorn with the settings' host, port, workers and threads."""
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self):
            for key, value in {"bind": f"{settings.host}:{settings.port}", "workers": settings.workers,
                               "threads": settings.threads, "timeout": 0, "loglevel": settings.log_level.lower(),
                               # Clients that reuse a connection after a Retry-After wait must not
                               # find it closed under them (gunicorn's default is 2 s).
                               "keepalive": 75, "graceful_timeout": SHUTDOWN_GRACE_SECONDS,
                               "post_worker_init": _stop_jobs_on_sigterm}.items():
                self.cfg.set(key, value)

        def load(self):
            return create_app(settings)

    _Gunicorn().run()
