"""On a real CUDA device (skipped without one; bash benchmarks/gpu_check.sh runs them): float16,
SD 1.5's architecture at 512 px through every method, batches, and the backend's /predict.

Everything here also runs on every machine with CUDA emulated on the CPU (tests/test_devices.py);
these catch what emulation cannot: CUDA's kernels, float16 numerics, memory.
"""

from __future__ import annotations

import base64
import io
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from seediff_core import Segmenter, load_model
from seediff_core.methods import METHODS
from seediff_core.scenes import SHAPES, make_scene, render

pytestmark = pytest.mark.gpu
LABELS = list(SHAPES)


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from core_speed import build_sd15

    return build_sd15("cuda", torch.float16, tmp_path_factory.mktemp("sd15-tokenizer"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = ((a > 0) | (b > 0)).sum()
    return 1.0 if union == 0 else float(((a > 0) & (b > 0)).sum() / union)


def test_cuda_half_precision_matches_cpu_on_the_shipped_model():
    """On a GPU the default dtype is float16; its masks must agree with float32 on the CPU."""
    scenes = [make_scene(seed, touching=seed % 2 == 1) for seed in range(6)]
    results = {}
    for device in ("cpu", "cuda"):
        segmenter = Segmenter(load_model("shapes-world", device=device))
        results[device] = [segmenter.segment(Image.fromarray(render(scene, 256).image), LABELS) for scene in scenes]
    for cpu, cuda in zip(results["cpu"], results["cuda"]):
        for label in LABELS:
            assert _iou(cpu[label].mask, cuda[label].mask) > 0.9, label


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_sd15_in_half_precision_at_its_defaults(method, sd15):
    photo = Image.fromarray((np.random.default_rng(1).random((384, 512, 3)) * 255).astype(np.uint8))
    result = Segmenter(sd15, method=method).segment(photo, ["cat", "dog"])
    for mask in result.masks:
        assert mask.mask.shape == (384, 512) and np.isfinite(mask.soft).all() and 0 <= mask.score <= 1


def test_a_batch_on_the_gpu_gives_what_one_by_one_gives(sd15):
    images = [Image.fromarray((np.random.default_rng(s).random((512, 512, 3)) * 255).astype(np.uint8)) for s in range(3)]
    segmenter = Segmenter(sd15, noise_mode="noise", batch_size=3)
    for image, batched in zip(images, segmenter.segment_batch(images, ["cat", "dog"])):
        alone = segmenter.segment(image, ["cat", "dog"])
        for a, b in zip(alone.masks, batched.masks):
            assert np.mean(a.mask != b.mask) < 0.01, a.label


def test_predict_on_the_gpu(tmp_path):
    from backend.server import create_app
    from backend.settings import BackendSettings

    client = create_app(BackendSettings(model="shapes-world", model_dir=tmp_path, pipeline={"device": "cuda"})).test_client()
    deadline = time.time() + 120
    while client.get("/health").json["model_state"] == "loading" and time.time() < deadline:
        time.sleep(0.1)
    config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
              + "".join(f'<Label value="{label}"/>' for label in LABELS) + "</BrushLabels></View>")
    buffer = io.BytesIO()
    Image.fromarray(render(make_scene(3), 256).image).save(buffer, "PNG")
    task = {"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}}
    response = client.post("/predict", json={"tasks": [task], "project": "1.1", "label_config": config})
    assert response.status_code == 200, response.json
    (prediction,) = response.json["results"]
    assert any(region["type"] == "brushlabels" for region in prediction["result"]), prediction
