"""Settings that would cost hours or all memory are refused up front, by name, with the range."""

from __future__ import annotations

import threading

import pytest
from PIL import Image

from seediff_core import Cancelled, CostLimitError, SeediffConfig, Segmenter
from seediff_core.limits import COST_ENV, ITEM_RANGES, LIST_LIMITS, MAX_LABELS, MEMORY_ENV, RANGES

# Three tokens per name in the tiny tokenizer ("w", "1", "2"): more prompt passes than CLIP needs for
# ADE20K's and VOC's names (mostly one token), so the costs below are upper bounds.
VOC = [f"w{i}" for i in range(20)]
ADE = [f"w{i}" for i in range(150)]


@pytest.mark.parametrize("name", sorted(RANGES))
def test_every_ranged_setting_is_refused_outside_its_range(name):
    low, high = RANGES[name]
    kind = type(getattr(SeediffConfig(), name) if getattr(SeediffConfig(), name) is not None else 1)
    above = high + (1 if kind is int else 0.5)
    with pytest.raises(ValueError, match=rf"{name}={above} is outside its range"):
        SeediffConfig().replace(**{name: kind(above)})
    if low is not None and low > 0:
        below = low - (1 if kind is int else low / 2)
        with pytest.raises(ValueError, match=rf"{name}=.* is outside its range"):
            SeediffConfig().replace(**{name: kind(below)})
    SeediffConfig().replace(**{name: kind(high)})  # the bound itself is allowed


@pytest.mark.parametrize("name", sorted(LIST_LIMITS))
def test_list_settings_have_a_length_limit(name):
    value = getattr(SeediffConfig(), name)
    longer = tuple(value[:1]) * (LIST_LIMITS[name] + 1)
    with pytest.raises(ValueError, match=rf"{name} has {len(longer)} values"):
        SeediffConfig().replace(**{name: longer})


@pytest.mark.parametrize("name", sorted(ITEM_RANGES))
def test_list_items_have_a_range(name):
    with pytest.raises(ValueError, match=rf"{name} values .* are outside"):
        SeediffConfig().replace(**{name: (ITEM_RANGES[name][1] * 2,)})


@pytest.mark.parametrize("changes", [{"noise_mode": "noise", "noise_draws": 1_000_000},
                                     {"pamr_iterations": 100_000_000}, {"inversion_steps": 1_000_000}])
def test_the_settings_that_took_the_server_down_are_refused(changes):
    with pytest.raises(ValueError, match=f"{list(changes)[-1]}=.* is outside its range"):
        SeediffConfig().replace(**changes)


def test_every_reference_procedure_is_within_the_ranges_and_the_cost_limit(tiny_model):
    """A 640x480 photo on SD 1.5's layout (the tiny UNet has its blocks) at each paper's settings."""
    segmenter = Segmenter(tiny_model)
    for labels, settings in [
        (ADE, {"working_size": 512}),  # the defaults
        (ADE, {"working_size": 512, "pamr_iterations": 5000, "pamr_dilations": (1,)}),  # the SeeDiff demo
        (ADE, {"method": "t2m", "working_size": 1024, "noise_draws": 10}),  # T2M's VOC procedure
        (VOC, {"method": "diffseg", "working_size": 1024}),
        (VOC, {"method": "diffumask", "working_size": 512}),
    ]:
        cost = segmenter.estimate_cost(labels, (640, 480), **settings)
        assert cost.units <= 500, (settings, cost.describe())


def test_settings_within_range_that_add_up_are_refused_before_any_unet_call(tiny_model, monkeypatch):
    calls = []
    handle = tiny_model.unet.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        segmenter = Segmenter(tiny_model)
        image = Image.new("RGB", (640, 480), (120, 40, 200))
        too_much = {"working_size": 1024, "noise_mode": "noise", "noise_draws": 32, "pamr_iterations": 10000}
        with pytest.raises(CostLimitError, match=f"units per image.*raise {COST_ENV}"):
            segmenter.segment(image, ADE, **too_much)
        monkeypatch.setenv(MEMORY_ENV, "0.001")
        with pytest.raises(CostLimitError, match=f"GiB of attention.*raise {MEMORY_ENV}"):
            segmenter.segment(image, ["cat"], method="diffseg")
        assert calls == []
        monkeypatch.delenv(MEMORY_ENV)
        assert segmenter.segment(image, ["cat"])["cat"].mask.shape == (480, 640)  # an ordinary request still runs
        monkeypatch.setenv(COST_ENV, "100000")  # an administrator who means it
        estimate = segmenter.estimate_cost(ADE, (640, 480), **too_much)
        assert estimate.units > 500
    finally:
        handle.remove()


def test_too_many_labels_or_words_are_refused(tiny_model):
    segmenter = Segmenter(tiny_model)
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS}"):
        segmenter.estimate_cost([f"w{i}" for i in range(MAX_LABELS + 1)])
    with pytest.raises(ValueError, match="prompt words"):
        segmenter.estimate_cost(["cat"], synonyms={"cat": [f"s{i}" for i in range(20)]})


def test_a_run_stops_before_the_next_unet_call_when_asked(tiny_model):
    segmenter = Segmenter(tiny_model)
    calls, stop = [], threading.Event()

    def count(*_):
        calls.append(1)
        if len(calls) == 2:
            stop.set()

    handle = tiny_model.unet.register_forward_pre_hook(count)
    try:
        with pytest.raises(Cancelled):
            segmenter.segment(Image.new("RGB", (96, 80), (10, 200, 30)), ["cat"], inversion_steps=8,
                              should_stop=stop.is_set)
    finally:
        handle.remove()
    # The stop hook runs before ours, so the third call was refused: two UNet calls ran, not nine.
    assert len(calls) == 2
    assert not tiny_model.unet._forward_pre_hooks or len(tiny_model.unet._forward_pre_hooks) == 0
