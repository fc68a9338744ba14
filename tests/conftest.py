from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Nothing in the tests may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny import build_tiny_sd  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd15"))


@pytest.fixture(scope="session")
def tiny_sd2_dir(tmp_path_factory) -> Path:
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd2"), sd2=True)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from seediff_core import load_model

    return load_model(str(tiny_model_dir), device="cpu")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory):
    """A real Label Studio on 127.0.0.1, one per test session (tests/label_studio_server.py)."""
    from label_studio_server import start_label_studio

    yield from start_label_studio(tmp_path_factory.mktemp("label-studio"))


@pytest.fixture(scope="session")
def ls_pat(label_studio) -> str:
    """A Personal Access Token of the Label Studio admin (what a user gives the backend)."""
    import requests
    from label_studio_server import TOKEN

    response = requests.post(f"{label_studio}/api/token/", headers={"Authorization": f"Token {TOKEN}"}, timeout=30)
    response.raise_for_status()
    return response.json()["token"]


@pytest.fixture(scope="session")
def ls_backend(label_studio, ls_pat, tmp_path_factory):
    """``seediff serve`` on the shipped shapes-world model, authenticated to the shared Label Studio
    with a Personal Access Token; yields (url, log path)."""
    from label_studio_server import start_backend

    yield from start_backend(label_studio, ls_pat, tmp_path_factory.mktemp("backend"))


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run only where CUDA is available."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
