"""The seediff console script, end to end on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from seediff_core.cli import _spread_multi_value_options, safe_filename
from seediff_core.scenes import make_scene, render



def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    exe = Path(sys.executable).with_name("seediff")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_segment_writes_the_stable_layout_and_survives_a_bad_image(tmp_path, tiny_model_dir):
    Image.fromarray(render(make_scene(1), 256).image).resize((333, 517)).save(tmp_path / "a.png")
    Image.fromarray(render(make_scene(2), 256).image).save(tmp_path / "b.jpg")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    proc = _run(["segment", "a.png", "broken.png", "b.jpg", "--labels", "cat", "dog/wolf",
                 "--model", str(tiny_model_dir), "--out", str(out), "--steps", "3", "--t", "150"], tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "broken.png" in proc.stderr and "cannot read" in proc.stderr
    assert "2 of 3 image(s) written" in proc.stderr
    for stem, size in (("a", (333, 517)), ("b", (256, 256))):
        folder = out / stem
        info = json.loads((folder / "result.json").read_text())
        assert (info["width"], info["height"]) == size
        assert [entry["label"] for entry in info["labels"]] == ["cat", "dog/wolf"]
        assert info["settings"]["inversion_steps"] == 3 and info["settings"]["timestep"] == 150
        for entry in info["labels"]:
            mask = np.asarray(Image.open(folder / entry["file"]))
            assert mask.shape == (size[1], size[0]) and set(np.unique(mask)) <= {0, 255}
            assert int(np.count_nonzero(mask)) == entry["area"]
        assert Image.open(folder / "overlay.png").size == size
    assert (out / "a" / "dog_wolf.png").exists()
    assert not (out / "broken").exists()


def test_all_good_images_exit_zero(tmp_path, tiny_model_dir):
    Image.fromarray(render(make_scene(3), 128).image).save(tmp_path / "c.png")
    proc = _run(["segment", "c.png", "--labels", "cat,dog", "--model", str(tiny_model_dir),
                 "--out", "o", "--steps", "2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "o" / "c").iterdir()) == ["cat.png", "dog.png", "overlay.png", "result.json"]


def test_missing_model_is_one_clear_line(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    proc = _run(["segment", "x.png", "--labels", "cat", "--model", "nobody/nothing-here"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("could not load model 'nobody/nothing-here'") == 1 and "Traceback" not in proc.stderr


def test_settings_over_a_limit_are_refused_before_any_image(tmp_path, tiny_model_dir, monkeypatch):
    """In process (click's runner; the console script's own exit codes are checked above)."""
    from click.testing import CliRunner

    from seediff_core.cli import main

    for name in ("x.png", "y.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    monkeypatch.setenv("SEEDIFF_MAX_IMAGE_COST", "5")  # an administrator's tight limit: 10 inversion steps cost more
    result = CliRunner().invoke(main, ["segment", str(tmp_path / "x.png"), str(tmp_path / "y.png"), "--labels", "cat",
                                       "--model", str(tiny_model_dir), "--device", "cpu", "--out", str(tmp_path / "o"),
                                       "--set", "working_size=512"])
    assert result.exit_code == 2 and result.output.count("units per image") == 1, result.output
    assert not (tmp_path / "o").exists()


def test_labels_take_every_word_up_to_the_next_option():
    argv = ["segment", "a.png", "--labels", "cat", "dog", "--out", "d", "--labels", "bird"]
    assert _spread_multi_value_options(argv, ("--labels",)) == [
        "segment", "a.png", "--labels", "cat", "--labels", "dog", "--out", "d", "--labels", "bird"]
    assert safe_filename("a/b:c") == "a_b_c" and safe_filename("..") == "_"
