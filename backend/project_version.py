"""Keeping a Label Studio project's model version on the version of seediff's predictions.

The Data Manager's "Prediction score" column (and sorting by it) counts only the predictions of the
project's model version. When a backend is connected, Label Studio sets that version to the
connection's title ("seediff"), which no prediction carries, so the column stays empty. After a
project's first predictions of a version, the backend sets the project's version to it through the
API, when it knows LABEL_STUDIO_URL and a token.

A version someone chose on purpose is left alone: the project's version is replaced only when it is
empty, the title of one of the project's ML backends, or an earlier seediff version.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from .fetch import TokenProvider
from .state import ProjectState

log = logging.getLogger(__name__)
TRIES = 4  # Label Studio on SQLite may hold its database while it stores our predictions


def sync_project_version(base_url: str, tokens: TokenProvider, project_id: int | str, version: str,
                         timeout: float = 10.0, force: bool = False) -> str:
    """Set the project's model version to ``version`` unless it holds a version chosen by hand
    (``force`` sets it anyway). Returns "set", "kept" (already ``version``) or "chosen" (left as is).

    Raises:
        requests.RequestException: Label Studio could not be reached or refused the call.
    """
    url = f"{base_url}/api/projects/{project_id}"
    response = requests.get(url, headers=tokens.header(), timeout=timeout)
    response.raise_for_status()
    current = response.json().get("model_version") or ""
    if current == version:
        return "kept"
    if not force and current and not current.startswith("seediff-"):
        backends = requests.get(f"{base_url}/api/ml", params={"project": project_id}, headers=tokens.header(),
                                timeout=timeout)
        backends.raise_for_status()
        if current not in {b.get("title") for b in backends.json()}:
            return "chosen"
    requests.patch(url, json={"model_version": version}, headers=tokens.header(), timeout=timeout).raise_for_status()
    return "set"


class ProjectVersions:
    """Per backend process: after a project's predictions, its model version is synced once per
    version, on a background thread (Label Studio is still waiting for those predictions)."""

    def __init__(self, base_url: str | None, tokens: TokenProvider, state: ProjectState, timeout: float):
        self.base_url, self.tokens, self.state, self.timeout = base_url, tokens, state, timeout
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seediff-project-version")
        self._tried: set[tuple[str, str]] = set()  # once per process and version, even when it failed
        self._lock = threading.Lock()

    def after_predictions(self, project_id: str, version: str) -> None:
        if not (self.base_url and self.tokens.api_key and project_id.isdigit()):
            return
        with self._lock:
            if (project_id, version) in self._tried or self.state.get(project_id, "project_model_version") == version:
                return
            self._tried.add((project_id, version))
        self._pool.submit(self._sync, project_id, version)

    def _sync(self, project_id: str, version: str) -> None:
        for attempt in range(TRIES):
            try:
                outcome = sync_project_version(self.base_url, self.tokens, project_id, version, self.timeout)
            except Exception as exc:  # never a request's failure: the predictions are already answered
                if attempt == TRIES - 1:
                    log.warning("project %s: could not set its model version to %s: %s (set it in the project's "
                                "settings to see the prediction scores in the Data Manager)", project_id, version, exc)
                    return
                time.sleep(2**attempt)
                continue
            if outcome == "chosen":
                log.info("project %s keeps the model version chosen in Label Studio; the Data Manager shows that "
                         "version's scores, not %s's", project_id, version)
            self.state.set(project_id, "project_model_version", version)
            return
