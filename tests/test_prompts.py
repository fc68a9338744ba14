"""Prompts from labels, with token positions tracked."""

from __future__ import annotations

import pytest

from seediff_core.prompts import build_prompts


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return tiny_model.tokenizer


def _ids(tokenizer, text):
    return tokenizer(text).input_ids


def test_positions_point_at_each_label(tokenizer):
    (prompt,) = build_prompts(["cat", "dog", "bird"], tokenizer)
    assert prompt.text == "a photo of a cat, a dog and a bird"
    ids = _ids(tokenizer, prompt.text)
    assert prompt.length == len(ids)
    for label in ("cat", "dog", "bird"):
        (position,) = prompt.tokens[label]
        assert ids[position] == _ids(tokenizer, label)[1]


def test_multi_token_labels_and_synonyms_collect_all_their_tokens(tokenizer):
    (prompt,) = build_prompts(["zebra", "cat"], tokenizer, synonyms={"cat": ["kitten"]})
    assert prompt.text == "a photo of a zebra, a cat and a kitten"
    ids = _ids(tokenizer, prompt.text)
    zebra = _ids(tokenizer, "zebra")[1:-1]
    assert len(zebra) > 1  # not in the tiny vocabulary: spelled out in characters
    assert [ids[i] for i in prompt.tokens["zebra"]] == zebra
    assert [ids[i] for i in prompt.tokens["cat"]] == [_ids(tokenizer, "cat")[1], _ids(tokenizer, "kitten")[1]]


def test_templates_with_text_after_the_labels(tokenizer):
    (prompt,) = build_prompts(["cat"], tokenizer, template="{labels} and a tree")
    assert prompt.text == "a cat and a tree"
    assert _ids(tokenizer, prompt.text)[prompt.tokens["cat"][0]] == _ids(tokenizer, "cat")[1]


def test_overflowing_vocabularies_are_split_into_passes(tokenizer):
    labels = [f"label{i}" for i in range(12)]
    prompts = build_prompts(labels, tokenizer, max_tokens=40)
    assert len(prompts) > 1
    assert [label for p in prompts for label in p.tokens] == labels
    for prompt in prompts:
        assert prompt.length <= 40
        ids = _ids(tokenizer, prompt.text)
        for label, positions in prompt.tokens.items():
            assert [ids[i] for i in positions] == _ids(tokenizer, label)[1:-1]


@pytest.mark.parametrize(
    "labels, kwargs, message",
    [
        ([], {}, "no labels"),
        (["cat", "cat"], {}, "duplicate"),
        (["cat", " "], {}, "empty label"),
        (["cat"], {"template": "a photo"}, "exactly once"),
        (["cat"], {"max_tokens": 6}, "does not fit"),
    ],
)
def test_bad_label_lists_are_clear_errors(tokenizer, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_prompts(labels, tokenizer, **kwargs)
