"""What the backend answers when a request or a task cannot be served.

A request Label Studio (or anyone) got wrong is a ``RequestError``: HTTP 400 with a JSON body
``{"error": <what is wrong and how to fix it>, "detail": {"field": <where>, ...}}``. A server that
cannot take the work now is ``Unavailable``: HTTP 503 with Retry-After. Anything else is our bug:
HTTP 500 with a request id to find the traceback in the log, never the exception itself.
"""

from __future__ import annotations

from typing import Any


class RequestError(ValueError):
    """The request is malformed at ``field`` (a path such as ``tasks[0]`` or ``params.context``)."""

    def __init__(self, field: str, problem: str, fix: str | None = None):
        super().__init__(f"{field}: {problem}" + (f"; {fix}" if fix else ""))
        self.field, self.problem, self.fix = field, problem, fix

    def body(self) -> dict[str, Any]:
        detail = {"field": self.field, "problem": self.problem}
        if self.fix:
            detail["fix"] = self.fix
        return {"error": str(self), "detail": detail}


class Unavailable(Exception):
    """The server cannot do this now (model loading or failed, queue full); retry after ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


def require_object(value: Any, field: str, example: str, optional: bool = True) -> dict:
    """``value`` if it is a JSON object (None counts as an empty one when ``optional``), else a RequestError."""
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        raise RequestError(field, f"must be a JSON object, got {_json_type(value)}", f"send e.g. {example}")
    return value


def require_str(value: Any, field: str, example: str, number_ok: bool = False) -> str | None:
    """``value`` if it is a string or None (or, with ``number_ok``, an integer id, as a string)."""
    if value is None or isinstance(value, str):
        return value
    if number_ok and isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # project ids arrive as numbers from some clients
    raise RequestError(field, f"must be a string, got {_json_type(value)}", f"send e.g. {example}")


def task_error_message(exc: BaseException) -> str:
    """What a task's failure says in the response: our own errors verbatim, anything else by name only."""
    from seediff_core import CostLimitError, ImageError

    from .fetch import FetchError
    from .worker import JobStopped

    if isinstance(exc, (FetchError, ImageError, RequestError, CostLimitError, JobStopped)):
        return str(exc)
    return "internal error while segmenting this task (the server log has the details)"


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)
