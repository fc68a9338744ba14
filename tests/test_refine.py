from __future__ import annotations

import numpy as np
import torch

from seediff_core.refine import contrast_score, cosine_affinity_sum, minmax, otsu_threshold, pamr, resolve_overlaps, upsample


def test_minmax_per_map_and_flat_maps_become_zero():
    x = torch.stack([torch.arange(16.0).reshape(4, 4), torch.full((4, 4), 3.0)])
    out = minmax(x)
    assert out[0].min() == 0 and out[0].max() == 1
    assert torch.count_nonzero(out[1]) == 0
    valid = torch.zeros(4, 4, dtype=torch.bool)
    valid[:2] = True
    assert minmax(x, valid=valid)[0, 1].max() == 1  # statistics from the valid rows only
    assert minmax(torch.empty(0, 4, 4)).shape == (0, 4, 4)


def test_otsu_splits_two_modes():
    values = torch.cat([torch.full((100,), 0.2), torch.full((50,), 0.8)]) + torch.linspace(-0.02, 0.02, 150)
    threshold = otsu_threshold(values)
    assert values[:100].max() < threshold <= values[100:].min()
    assert otsu_threshold(torch.empty(0)) == 0.5
    assert otsu_threshold(torch.full((10,), 0.3)) == 0.5


def test_cosine_affinity_sum_matches_the_loop():
    attention = torch.rand(20, 20).softmax(-1)
    seeds = torch.zeros(2, 20, dtype=torch.bool)
    seeds[0, [1, 4, 7]] = True
    seeds[1, [10]] = True
    fast = cosine_affinity_sum(attention, seeds)
    for k in range(2):
        slow = torch.stack([
            sum(torch.nn.functional.cosine_similarity(attention[i], attention[s], dim=0) for s in seeds[k].nonzero()[:, 0])
            for i in range(20)
        ])
        assert torch.allclose(fast[k], slow, atol=1e-5)
    assert cosine_affinity_sum(attention, torch.zeros(0, 20, dtype=torch.bool)).shape == (0, 20)


def test_pamr_keeps_constant_masks_and_snaps_to_colour_edges():
    image = torch.zeros(3, 32, 32)
    image[0, :, 16:] = 1.0  # left black, right red
    mask = torch.zeros(1, 32, 32)
    mask[0, :, 18:28] = 1.0  # inside the red half only
    refined = pamr(image, mask, iterations=40, dilations=(1, 2, 4, 8))
    # The whole red half is reached, and across the edge only a trickle arrives (as in the original
    # PAMR, the affinity is averaged over colour channels, so an edge in one channel is not a wall).
    assert refined[0, :, 16:].min() > 0.45
    assert refined[0, :, :16].max() < 0.1
    ones = torch.ones(2, 32, 32)
    assert torch.allclose(pamr(image, ones), ones, atol=1e-5)
    assert pamr(image, torch.zeros(0, 32, 32)).shape == (0, 32, 32)


def test_resolve_overlaps_gives_each_pixel_to_the_strongest_label():
    masks = torch.ones(2, 2, 2, dtype=torch.bool)
    masks[1, 0, 0] = False
    strength = torch.tensor([[[0.9, 0.1], [0.9, 0.1]], [[1.0, 0.5], [0.2, 0.9]]])
    out = resolve_overlaps(masks, strength)
    assert out.sum(0).max() == 1
    assert out[0].tolist() == [[True, False], [True, False]]
    assert out[1].tolist() == [[False, True], [False, True]]
    assert resolve_overlaps(torch.zeros(0, 2, 2, dtype=torch.bool), torch.zeros(0, 2, 2)).shape == (0, 2, 2)


def test_contrast_score():
    evidence = torch.zeros(2, 4, 4)
    evidence[0, :2] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :, :2] = True
    scores = contrast_score(evidence, masks)
    assert scores[0] == 1.0 and scores[1] == 0.0
    assert contrast_score(evidence, torch.zeros(2, 4, 4, dtype=torch.bool)).tolist() == [0.0, 0.0]
    assert contrast_score(torch.zeros(0, 4, 4), torch.zeros(0, 4, 4, dtype=torch.bool)).shape == (0,)


def test_bicubic_upsampling_stays_in_range():
    maps = torch.zeros(1, 4, 4)
    maps[0, 1:3, 1:3] = 1
    out = upsample(maps, (16, 16))
    assert out.shape == (1, 16, 16) and out.min() >= 0 and out.max() <= 1


def test_label_objects_gives_each_object_whole_to_the_label_with_the_most_evidence():
    from seediff_core.refine import label_objects

    image = torch.full((3, 20, 30), 0.5)
    image[:, 2:10, 2:12] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]   # a red object
    image[:, 12:18, 16:28] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]  # a blue object
    image[:, 12:18, 10:16] = torch.tensor([0.1, 0.9, 0.1])[:, None, None]  # a green one touching it
    masks = torch.zeros(3, 20, 30, dtype=torch.bool)
    masks[0, 2:10, 2:7] = True        # label 0 claims the red object's left half ...
    masks[2, 2:10, 7:12] = True       # ... label 2 (absent from the image) its right half
    masks[1, 12:18, 16:28] = True     # label 1: the blue object
    masks[2, 12:18, 10:16] = True     # label 2 also claims the green object, which touches the blue
    evidence = torch.zeros(3, 20, 30)
    evidence[0, 2:10, 2:12] = 0.6
    evidence[2, 2:10, 2:12] = 0.4     # label 0 has more evidence over the red object as a whole
    evidence[1, 12:18, 10:28] = 0.3
    evidence[2, 12:18, 10:16] = 0.7   # the green part is label 2's
    out = label_objects(masks, evidence, image, colour_tolerance=0.15)
    assert out[0].sum() == 80 and out[0, 2:10, 2:12].all()  # the whole red object
    assert out[1].sum() == 72 and out[1, 12:18, 16:28].all()  # blue stays blue
    assert out[2].sum() == 36 and out[2, 12:18, 10:16].all()  # green, told apart by its colour
    assert ((out.sum(dim=0) == 1) == masks.any(dim=0)).all()  # disjoint, same pixels
    merged = label_objects(masks, evidence, image, colour_tolerance=2.0)  # colours ignored: one object
    assert merged[1].sum() == 108 and merged[2].sum() == 0  # 0.3 over all of it beats 0.7 over a third


def test_label_objects_drops_objects_the_words_are_not_looked_up_on():
    from seediff_core.refine import label_objects

    image = torch.full((3, 10, 20), 0.5)
    masks = torch.zeros(2, 10, 20, dtype=torch.bool)
    masks[0, 1:5, 1:5] = True    # an object
    masks[1, 6:9, 12:18] = True  # background that a seed grew into
    evidence = torch.stack([masks[0].float(), masks[1].float()])
    strength = torch.zeros(10, 20)
    strength[1:5, 1:5] = 0.9
    strength[6:9, 12:18] = 0.1
    kept = label_objects(masks, evidence, image, 0.15, strength, min_strength=0.25)
    assert kept[0].sum() == 16 and not kept[1].any()
    assert label_objects(masks, evidence, image, 0.15, strength, min_strength=0.0)[1].sum() == 18


def test_connected_components_partition_the_mask_as_cv2_does():
    """The torch labelling (which stays on the maps' device) against OpenCV's, 8-connected, on random
    masks, dilated ones (big blobs) and a snake that winds through the whole grid."""
    import cv2

    from seediff_core.refine import component_boxes, connected_components

    rng = np.random.default_rng(0)
    snake = np.zeros((48, 48), bool)
    snake[::4] = True
    for row in range(0, 48, 8):
        snake[row : row + 4, 47] = True
        snake[row + 4 : row + 8, 0] = True
    masks = [snake, np.zeros((5, 7), bool), np.ones((5, 7), bool)]
    for trial in range(60):
        mask = rng.random(tuple(rng.integers(1, 40, 2))) < rng.random()
        masks.append(cv2.dilate(mask.astype(np.uint8), np.ones((3, 3))).astype(bool) if trial % 2 else mask)
    for mask in masks:
        count, reference = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        labels, found = connected_components(torch.from_numpy(mask))
        labels = labels.numpy()
        assert found == count - 1
        assert np.array_equal(labels > 0, mask)
        assert len(set(zip(reference[mask].tolist(), labels[mask].tolist()))) == found  # one to one
        boxes = np.zeros(mask.shape, bool)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        for contour in contours:
            x, y, w, h = cv2.boundingRect(contour)
            boxes[y : y + h, x : x + w] = True
        assert np.array_equal(component_boxes(torch.from_numpy(mask)).numpy(), boxes)
