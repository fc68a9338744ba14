"""benchmarks/touching_probe.py: its two rows measure what they say, on real touching scenes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.touching_probe import (best_segment_ious, layer_label_shares, own_label_shares, probe, summary,
                                       touching_scenes)
from seediff_core import Segmenter
from seediff_core.scenes import SHAPES


def test_segments_equal_to_the_objects_score_one_and_a_merged_pair_less():
    rendered = touching_scenes("tune", 1, patterned=True)[0]
    assert best_segment_ious(rendered.masks, rendered.masks) == [1.0] * len(rendered.masks)
    merged = np.any(np.stack(rendered.masks), axis=0)
    # Touching objects in one segment: each object's best match is the merged blob, below 1.
    assert all(0 < value < 1 for value in best_segment_ious([merged], rendered.masks))
    assert best_segment_ious([], rendered.masks) == [0.0] * len(rendered.masks)


def test_own_label_share_counts_an_objects_pixels_under_its_own_label():
    rendered = touching_scenes("tune", 3, patterned=False)[2]
    truth = {label: rendered.label_mask(label) for label in SHAPES}
    assert own_label_shares(truth, rendered) == [1.0] * len(rendered.masks)
    nothing = {label: np.zeros_like(mask) for label, mask in truth.items()}
    assert own_label_shares(nothing, rendered) == [0.0] * len(rendered.masks)


@pytest.mark.timeout(300)
def test_the_probe_runs_on_the_shipped_model_and_reads_above_chance():
    result = probe(Segmenter.from_name("shapes-world", device="cpu"), 2, "tune", [200])
    rows = summary(result)
    for kind in ("flat", "patterned"):
        layers = result["kinds"][kind]["layers"][200]
        assert len(layers) >= 5 and all(0 <= v <= 1 for v in layers.values())
        # A layer whose words bind labels touching objects well above chance (0.25).
        assert rows[kind]["best_layer_share"] > 0.5, layers
        assert 0 < rows[kind]["segments_best_iou"] <= 1


@pytest.mark.timeout(300)
def test_the_shipped_models_seed_layer_labels_touching_objects_per_pixel():
    """What shapes-world v3 was trained for: on held-out scenes whose objects touch, the argmax of
    the four shape words' maps in the layer SeeDiff seeds from gives most of each object's pixels
    its own label (measured 0.898 flat, 0.945 patterned on these 10 scenes each; v2: 0.75, 0.73)."""
    model = Segmenter.from_name("shapes-world", device="cpu").model
    for patterned in (False, True):
        shares = layer_label_shares(model, touching_scenes("test", 10, patterned), 50)
        assert shares["up_blocks.2.attentions.1"] >= 0.85, shares
