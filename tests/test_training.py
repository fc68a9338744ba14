"""tools/train_shapes_world.py end to end on a few scenes: the shipped model continued at another
resolution on touching scenes, exported, and loaded through the real loading code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from seediff_core import load_model

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "seediff_core" / "weights" / "shapes-world"


def _train(*args: str, cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "train_shapes_world.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.mark.timeout(300)
def test_the_shipped_model_continues_at_another_size_on_touching_scenes(tmp_path):
    work = tmp_path / "run"
    size = 64  # another grid than the shipped model's, small enough for a test
    _train("vae", "--work", str(work), "--steps", "0", "--size", str(size), "--init", str(SHIPPED), cwd=tmp_path)
    _train("cache", "--work", str(work), "--scenes", "8", "--size", str(size), "--touching", "0.5", "--flat", "0.25",
           cwd=tmp_path)
    cache = torch.load(work / "latents.pt", weights_only=False)
    assert cache["latents"].shape == (8, 4, size // 8, size // 8) and cache["size"] == size
    assert any(k["touching"] for k in cache["kinds"]) and not all(k["touching"] for k in cache["kinds"])
    _train("unet", "--work", str(work), "--init", str(SHIPPED), "--steps", "2", "--batch", "2", cwd=tmp_path)
    log = (work / "train.log").read_text()
    # Same frozen text encoder: what the shipped model's cross-attention learnt is kept.
    assert "cross-attention keys and values kept" in log
    model = load_model(str(work / "export"), device="cpu")
    assert model.native_size == size
    assert (work / "export" / "training_step.txt").read_text().strip() == "2"
