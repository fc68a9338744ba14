"""The model class API of label-studio-ml 2.x (``LabelStudioMLBase``), without its server.

PyPI only has label-studio-ml 1.0.9 (2023, old Flask pins); 2.x is GitHub-only. The server in
``backend.server`` speaks the protocol; a model subclasses this class and implements ``setup``,
``predict(tasks, context)`` and ``fit(event, data)``, as it would for 2.x. As in 2.x, an instance is
built per request and ``setup`` must be cheap; heavy things live in process-wide objects.
"""

from __future__ import annotations

import json
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from .errors import RequestError
from .state import ProjectState

TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


class LabelStudioMLBase:
    """Args:
        project_id (`str`): Label Studio's project id ("7" from "7.1795354117").
        label_config (`str`, *optional*): the project's labeling config XML.
        extra_params (`dict`, *optional*): the backend's "Extra params" JSON from /setup; when None
            the params stored at the project's last /setup are used.
        state (`ProjectState`): where per-project values persist.
    """

    def __init__(self, project_id: str, label_config: str | None, state: ProjectState,
                 extra_params: dict[str, Any] | None = None):
        self.project_id = str(project_id)
        self._state = state
        if label_config:
            self.label_interface = parse_label_config(label_config)  # stored only once it parses
            self.set("label_config", label_config)
        self.label_config = label_config or self.get("label_config")
        self.label_interface = parse_label_config(self.label_config) if self.label_config else None
        # Per index of the last ``predict``'s tasks, why that task got no prediction; the server
        # reports them next to the results (Label Studio ignores the extra key).
        self.task_errors: dict[int, str] = {}
        if extra_params is not None:
            self.set("extra_params", json.dumps(extra_params))
        self.extra_params: dict[str, Any] = json.loads(self.get("extra_params") or "{}") or {}
        self.setup()

    def setup(self) -> None:
        """Cheap per-request setup, e.g. ``self.set("model_version", ...)``."""

    def predict(self, tasks: list[dict], context: dict | None = None, **kwargs) -> list:
        """One entry per task: a prediction dict, or a list of them (an empty list: none for that task)."""
        raise NotImplementedError

    def fit(self, event: str, data: dict, **kwargs) -> dict | None:
        """Called for Label Studio's webhook events; must return quickly (Label Studio waits 1 s)."""
        return None

    def get(self, key: str) -> str | None:
        return self._state.get(self.project_id, key)

    def set(self, key: str, value: str) -> None:
        self._state.set(self.project_id, key, value)

    @property
    def model_version(self) -> str:
        return self.get("model_version") or "0.0.1"


def parse_label_config(xml: str) -> LabelInterface:
    """Raises RequestError (field ``label_config``) when the config is not a labeling config."""
    try:
        return LabelInterface(xml)
    except Exception as exc:  # the SDK raises ParseError, ValueError or KeyError for broken configs
        reason = str(exc).splitlines()[0][:200] if str(exc) else "it does not parse"
        raise RequestError("label_config", f"not a valid labeling config XML ({reason})",
                           'send the project\'s config, e.g. <View><Image name="image" value="$image"/>...</View>') from None
