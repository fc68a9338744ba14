"""The backend's HTTP contract as an OpenAPI 3.0 document, served at GET /openapi.json.

The tests run schemathesis against a live server with this document: every response must match
it, and no request may get a 5xx other than 503.
"""

from __future__ import annotations

from typing import Any

import base64
import io
from functools import lru_cache

_NULLABLE_STRING = {"type": "string", "nullable": True}
_PROJECT = {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True,
            "description": "Label Studio's project id, e.g. \"7.1700000000\" (the part before the dot is used)"}
_EXAMPLE_CONFIG = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
                   '<Label value="circle"/><Label value="square"/></BrushLabels></View>')


@lru_cache(1)
def _example_image() -> str:
    """A 64x64 red circle on grey, as a data: URL: the example task a contract test can predict."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 64), (128, 128, 128))
    ImageDraw.Draw(image).ellipse((12, 12, 52, 52), fill=(220, 30, 30))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _json(schema: dict, description: str, headers: dict | None = None) -> dict:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, retry: bool = False) -> dict:
    headers = {"Retry-After": {"description": "seconds to wait", "required": True, "schema": {"type": "string"}}}
    return _json({"$ref": "#/components/schemas/Error"}, description, headers if retry else None)


def _body(schema: dict) -> dict:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


def _common(responses: dict) -> dict:
    return {**responses, "401": _error("BASIC_AUTH_USER is set and the request's credentials are missing or wrong")}


def openapi_document() -> dict[str, Any]:
    error = {
        "type": "object", "required": ["error", "detail"],
        "properties": {
            "status": {"type": "integer"},
            "error": {"type": "string", "description": "what is wrong and how to fix it"},
            "detail": {"type": "object", "description": "field (where), problem, fix; retry_after for 503",
                       "properties": {"field": {"type": "string"}, "problem": {"type": "string"},
                                      "fix": {"type": "string"}, "retry_after": {"type": "integer"},
                                      "reference": {"type": "string"}}},
        },
    }
    health = {
        "type": "object", "required": ["status", "model_state"],
        "properties": {"status": {"type": "string", "enum": ["UP"]}, "model_class": {"type": "string"},
                       "model": {"type": "string"}, "model_state": {"type": "string", "enum": ["loading", "ready", "error"]},
                       "model_error": _NULLABLE_STRING, "queued": {"type": "integer", "minimum": 0}},
    }
    task = {"type": "object", "description": "a Label Studio task; data holds the image reference under the Image's value",
            "properties": {"id": {"anyOf": [{"type": "integer"}, {"type": "string"}], "nullable": True},
                           "data": {"description": "an object with the image reference under the Image's value; "
                                                   "a task whose data lacks it fails alone (results[i] = [], errors)"}},
            "example": {"id": 1, "data": {"image": _example_image()}}}
    region = {"type": "object", "required": ["from_name", "to_name", "type", "value"],
              "properties": {"id": {"type": "string"}, "from_name": {"type": "string"}, "to_name": {"type": "string"},
                             "type": {"type": "string"}, "value": {"type": "object"}, "score": {"type": "number"},
                             "original_width": {"type": "integer"}, "original_height": {"type": "integer"}}}
    prediction = {"type": "object", "required": ["result", "score", "model_version"],
                  "properties": {"result": {"type": "array", "items": region}, "score": {"type": "number"},
                                 "model_version": {"type": "string"}}}
    predict_request = {
        "type": "object", "required": ["tasks"],
        "properties": {
            "tasks": {"type": "array", "minItems": 1, "items": task},
            "project": _PROJECT,
            "label_config": {**_NULLABLE_STRING, "example": _EXAMPLE_CONFIG},
            "params": {"type": "object", "nullable": True, "properties": {
                "context": {"type": "object", "nullable": True, "properties": {
                    "result": {"type": "array", "nullable": True, "items": {"type": "object"},
                               "description": "interactive mode: keypoints (is_positive) and rectangles"}}}}},
        },
    }
    predict_response = {
        "type": "object", "required": ["results", "model_version"],
        "properties": {
            "results": {"type": "array", "description": "one entry per task: a prediction, or [] when the task failed",
                        "items": {"oneOf": [prediction, {"type": "array", "maxItems": 0}]}},
            "model_version": {"type": "string"},
            "errors": {"type": "array", "items": {"type": "object", "required": ["index", "error"], "properties": {
                "index": {"type": "integer"}, "task": {}, "error": {"type": "string"}}}},
        },
    }
    setup_request = {"type": "object", "properties": {
        "project": _PROJECT, "schema": {**_NULLABLE_STRING, "example": _EXAMPLE_CONFIG},
        "extra_params": {"type": "object", "nullable": True, "description": "pipeline settings and prompts",
                         "example": {"timestep": 100}}}}
    webhook_request = {"type": "object", "properties": {
        "action": {"type": "string", "nullable": True, "example": "ANNOTATION_CREATED"},
        "project": {"type": "object", "nullable": True, "properties": {
            "id": {"anyOf": [{"type": "string"}, {"type": "integer"}], "nullable": True},
            "label_config": _NULLABLE_STRING}},
        "annotation": {"type": "object", "nullable": True}, "task": {"type": "object", "nullable": True}}}
    version = {"type": "object", "required": ["versions", "model_version"],
               "properties": {"versions": {"type": "array", "items": {"type": "string"}}, "model_version": {"type": "string"}}}
    bad = _error("the request is malformed: error names the field and the fix")
    busy = _error("the model is loading, failed to load, or its queue is full; retry after Retry-After s", retry=True)
    paths = {
        "/": {"get": {"operationId": "root", "responses": _common({"200": _json(health, "the server is up")})}},
        "/health": {"get": {"operationId": "health", "summary": "answers at once, also while the model loads or after it failed",
                            "responses": _common({"200": _json(health, "the server is up; model_state says the model's")})}},
        "/setup": {"post": {"operationId": "setup", "requestBody": _body(setup_request),
                            "responses": _common({"200": _json({"type": "object", "required": ["model_version"], "properties": {
                                "model_version": {"type": "string"}}}, "the model version for this project"), "400": bad})}},
        "/predict": {"post": {"operationId": "predict", "requestBody": _body(predict_request),
                              "responses": _common({"200": _json(predict_response, "one result per task"), "400": bad,
                                                    "503": busy})}},
        "/webhook": {"post": {"operationId": "webhook", "requestBody": _body(webhook_request),
                              "responses": _common({
                                  "200": _json({"type": "object", "properties": {"status": {"type": "string"}}}, "not an event seediff uses"),
                                  "201": _json({"type": "object", "properties": {"status": {"type": "string"}, "result": {"type": "string"}}},
                                               "queued: fit runs in the background"),
                                  "400": bad})}},
        "/metrics": {"get": {"operationId": "metrics", "responses": _common({"200": _json({"type": "object", "required": [
            "model_state", "queue", "requests", "tasks_ok", "tasks_failed"]}, "counters")})}},
        "/versions": {
            "get": {"operationId": "versions", "parameters": [{"name": "project", "in": "query", "required": False,
                                                               "schema": {"type": "string"}}],
                    "responses": _common({"200": _json(version, "the model version"), "400": bad})},
            "post": {"operationId": "versions_post", "requestBody": _body({"type": "object", "properties": {"project": _PROJECT}}),
                     "responses": _common({"200": _json(version, "the model version"), "400": bad})}},
        "/openapi.json": {"get": {"operationId": "openapi", "responses": _common({"200": _json({"type": "object"}, "this document")})}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "seediff ML backend", "version": "1",
                 "description": "Label Studio's ML-backend protocol. Errors are JSON: {error, detail}."},
        "paths": paths,
        "components": {"schemas": {"Error": error},
                       "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}}},
    }
