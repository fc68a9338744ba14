"""SD 1.5's attention grids at the library's defaults, through the CLI and the backend, every method.

The tiny UNet (tests/tiny.py) has SD 1.5's block layout: at its 128 px native size the latent is
16x16 and attention sits at 16/8/4/2, factors 1/2/4/8 as at 512 px. Nothing here overrides
``seed_factor``, ``expansion_factors``, ``inversion_steps`` or any other default, so the procedure
a Stable Diffusion user gets (seeds at factor 4, expansion at 4/2/1, 10-step inversion to t=200,
each method's own defaults) runs through a real UNet. (tests/test_devices.py runs the Segmenter at
these defaults for every method, on the CPU and on an emulated GPU.)
"""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from backend.rle import rle_to_mask
from backend.server import create_app
from backend.settings import BackendSettings
from seediff_core.config import SeediffConfig
from seediff_core.methods import METHODS
from seediff_core.scenes import make_scene, render

CONFIG = ('<View><Image name="image" value="$image"/>'
          '<BrushLabels name="tag" toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels></View>')


def _photo() -> Image.Image:
    return Image.fromarray(render(make_scene(7, touching=True), 256).image).resize((240, 180))


def test_the_defaults_are_sd15s():
    config = SeediffConfig()
    assert (config.seed_factor, config.expansion_factors, config.noise_mode, config.timestep,
            config.inversion_steps) == (4, (4, 2, 1), "invert", 200, 10)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_cli_segments_at_the_defaults(method, tiny_model_dir, tmp_path):
    """``seediff segment`` itself, in this process (click's runner: the model loads once for all
    methods; tests/test_cli.py runs the installed console script)."""
    from click.testing import CliRunner

    from seediff_core.cli import main

    _photo().save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "a.png"), "--labels", "cat,dog", "--model",
                                       str(tiny_model_dir), "--device", "cpu", "--method", method, "--out", str(out)])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "a/result.json").read_text())
    assert info["method"] == method and (info["width"], info["height"]) == (240, 180)
    settings = info["settings"]
    assert (settings["seed_factor"], settings["expansion_factors"]) == (4, [4, 2, 1])


@pytest.fixture(scope="module")
def client(tiny_model_dir, tmp_path_factory):
    settings = BackendSettings(model=str(tiny_model_dir), model_dir=tmp_path_factory.mktemp("backend"),
                               pipeline={"device": "cpu"})
    client = create_app(settings).test_client()
    deadline = time.time() + 60
    while client.get("/health").json["model_state"] == "loading" and time.time() < deadline:
        time.sleep(0.05)
    return client


@pytest.mark.parametrize("method", sorted(METHODS))
def test_predict_answers_at_the_defaults(method, client):
    project = f"{30 + sorted(METHODS).index(method)}.1"
    setup = client.post("/setup", json={"project": project, "schema": CONFIG, "extra_params": {"method": method}})
    assert setup.status_code == 200, setup.json
    buffer = io.BytesIO()
    _photo().save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    response = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": url}}], "project": project,
                                             "label_config": CONFIG})
    assert response.status_code == 200, response.json
    (prediction,) = response.json["results"]
    assert prediction["model_version"] == setup.json["model_version"]
    for region in prediction["result"]:
        assert region["value"]["brushlabels"][0] in ("cat", "dog")
        assert rle_to_mask(region["value"]["rle"], 180, 240).shape == (180, 240)
    assert 0 <= prediction["score"] <= 1 and np.isfinite(prediction["score"])
