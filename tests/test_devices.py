"""Device-correct from capture to masks: everything runs with the model on a CUDA device.

No GPU here, so CUDA is emulated on the CPU (tests/emulated_cuda.py): tensors say ``cuda:0``,
compute on CPU data, and every op that mixes devices fails as it does on CUDA. The hand-overs to
the CPU are named in the pipeline (``Segmenter._result``: the method's masks, once, before the
region stage's cv2/scipy work; the regions back to the device to be scored; the soft maps, once,
for the results). Every method, the region stage, clicks and boxes, ``segment_batch`` and
``segment_everything`` run end to end on SD 1.5's layout at the library's defaults, and the
emulated run gives exactly what the CPU gives (same kernels), in float32 and in float16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from emulated_cuda import DeviceMismatch, EmulatedCuda, emulated_cuda
from seediff_core import Segmenter, load_model
from seediff_core.hints import Hints
from seediff_core.methods import METHODS, get_method
from seediff_core.scenes import make_scene, render

LABELS = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.fromarray(render(make_scene(4, touching=True), 256).image).resize((200, 150))


def load_on_cuda(name: str, dtype: str | None = None):
    """``load_model(name, device="cuda", dtype=dtype)``'s own loading, past its per-process cache:
    emulated models must neither evict the other tests' models nor outlive this module."""
    from seediff_core.models import _load_cached, pick_dtype

    with emulated_cuda():
        return _load_cached.__wrapped__(name, "cuda", pick_dtype(torch.device("cuda"), dtype))


@pytest.fixture(scope="module")
def on_cuda(tiny_model_dir):
    """The tiny SD 1.5-layout model on "cuda" in float32; use it inside ``emulated_cuda()``."""
    return load_on_cuda(str(tiny_model_dir), "float32")


def _same(cpu, cuda) -> None:
    """The same result within float tolerance: attention differs in the last bits between devices
    (SDPA takes another kernel), and the tiny random model's maps are full of near-ties."""
    assert [m.label for m in cpu.masks] == [m.label for m in cuda.masks]
    for a, b in zip(cpu.masks, cuda.masks):
        assert np.mean(a.mask == b.mask) >= 0.99, a.label
        assert a.score == pytest.approx(b.score, abs=0.02), a.label
        assert np.abs(a.soft - b.soft).max() < 0.02, a.label


def test_the_model_really_is_on_the_emulated_device(on_cuda):
    assert on_cuda.device.type == "cuda"
    assert all(isinstance(p, EmulatedCuda) for p in on_cuda.unet.parameters())


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_cuda_and_matches_the_cpu(method, on_cuda, tiny_model, photo):
    """At the library's defaults (SD 1.5's grids: seeds at factor 4, expansion at 4/2/1)."""
    cpu = Segmenter(tiny_model, method=method).segment(photo, LABELS)
    with emulated_cuda():
        cuda = Segmenter(on_cuda, method=method).segment(photo, LABELS)
    _same(cpu, cuda)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_on_cuda_in_half_precision(method, tiny_model_dir, photo):
    """float16, the dtype a GPU run gets by default, as far as the CPU's half kernels go."""
    model = load_on_cuda(str(tiny_model_dir))
    assert model.dtype == torch.float16  # the default on cuda
    with emulated_cuda():
        result = Segmenter(model, method=method).segment(photo, LABELS)
    for mask in result.masks:
        assert mask.mask.shape == (150, 200) and np.isfinite(mask.soft).all() and 0 <= mask.score <= 1


def test_clicks_and_boxes_run_on_cuda(on_cuda, tiny_model, photo):
    hints = {"cat": Hints(positive=((0.4, 0.5),), negative=((0.9, 0.1),)), "dog": Hints(boxes=((0.1, 0.1, 0.6, 0.7),))}
    cpu = Segmenter(tiny_model).segment(photo, LABELS, hints=hints)
    with emulated_cuda():
        cuda = Segmenter(on_cuda).segment(photo, LABELS, hints=hints)
    _same(cpu, cuda)


def test_a_batch_runs_on_cuda(on_cuda, tiny_model, photo):
    images = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT), photo.resize((150, 200))]
    cpu = Segmenter(tiny_model).segment_batch(images, LABELS)
    with emulated_cuda():
        cuda = Segmenter(on_cuda).segment_batch(images, LABELS)
    for one, other in zip(cpu, cuda):
        _same(one, other)


def test_segment_everything_runs_on_cuda(on_cuda, tiny_model, photo):
    cpu = Segmenter(tiny_model).segment_everything(photo)
    with emulated_cuda():
        cuda = Segmenter(on_cuda).segment_everything(photo)
    _same(cpu, cuda)


@pytest.mark.parametrize("mode", ["noise", "clean"])
def test_the_other_noise_modes_run_on_cuda(mode, on_cuda, tiny_model, photo):
    cpu = Segmenter(tiny_model, noise_mode=mode).segment(photo, LABELS)
    with emulated_cuda():
        cuda = Segmenter(on_cuda, noise_mode=mode).segment(photo, LABELS)
    _same(cpu, cuda)


def test_half_precision_on_cuda_agrees_with_float32_on_the_shipped_model():
    """float16, as a GPU run gets by default, through the CPU's half kernels (not CUDA's)."""
    labels = ["circle", "square", "triangle", "star"]
    scenes = [Image.fromarray(render(make_scene(seed, touching=True), 256).image) for seed in (11, 12)]
    cpu = Segmenter(load_model("shapes-world", device="cpu"), working_size=128)
    half = Segmenter(load_on_cuda("shapes-world"), working_size=128)
    with emulated_cuda():
        results = [(cpu.segment(scene, labels), half.segment(scene, labels)) for scene in scenes]
    agreements = []
    for full, reduced in results:
        for label in labels:
            a, b = full[label].mask > 0, reduced[label].mask > 0
            union = (a | b).sum()
            agreements.append(1.0 if union == 0 else (a & b).sum() / union)
    assert min(agreements) > 0.9, agreements


# The checker itself: it must refuse what CUDA refuses, or the tests above prove nothing.

def test_the_checker_refuses_an_op_mixing_cuda_and_cpu():
    with emulated_cuda():
        x = torch.ones(4, 4, device="cuda")
        with pytest.raises(DeviceMismatch):
            _ = x + torch.ones(4, 4)
        with pytest.raises(DeviceMismatch):
            torch.where(torch.ones(4, 4, dtype=torch.bool), x, torch.inf)  # the refine.minmax
        with pytest.raises(TypeError, match="numpy"):
            x.numpy()
        assert float((x * torch.tensor(2.0)).sum()) == 32.0  # a CPU 0-dim tensor is a scalar, as on CUDA
        assert x.cpu().device.type == "cpu" and x[x > 0].shape == (16,)


def test_the_checker_finds_maps_left_on_the_cpu(on_cuda, photo):
    """AttentionMaps whose image stays on the CPU while the attention is on cuda (the bug the
    pipeline had) fail in the method, as on a GPU."""
    segmenter = Segmenter(on_cuda)
    config = segmenter.config_for()
    captured = {}
    original = segmenter._capture

    def keep(*args, **kwargs):
        captured["maps"] = original(*args, **kwargs)
        return captured["maps"]

    segmenter._capture = keep
    with emulated_cuda():
        segmenter.segment(photo, LABELS)
        maps = captured["maps"][0]
        maps.image = maps.image.cpu()
        with pytest.raises(DeviceMismatch):
            get_method("seediff").segment(maps, config)
