"""Prompts built from label lists, with every label's token positions tracked.

"a photo of {labels}" with labels [cat, dog, bird] gives "a photo of a cat, a dog and a bird".
A label's words (the label itself and its synonyms) may span several tokens; a label's map is
the mean over all of its tokens. When the words do not fit in one text window (77 tokens for
CLIP), the labels are split over several prompts, run as separate passes over the same latents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    """One text pass. ``tokens[label]`` lists that label's token indices in the encoded sequence
    (BOS at index 0), ready to index the key axis of cross-attention maps."""

    text: str
    tokens: dict[str, tuple[int, ...]]
    length: int  # tokens including BOS and EOS


def build_prompts(
    labels: Sequence[str],
    tokenizer,
    template: str = "a photo of {labels}",
    synonyms: Mapping[str, Sequence[str]] | None = None,
    max_tokens: int = 77,
    words: Mapping[str, Sequence[str]] | None = None,
) -> list[Prompt]:
    """Prompts covering ``labels`` (in order), each within ``max_tokens``.

    A label's prompt words are ``words[label]`` if given (e.g. Label Studio's ``predicted_values``
    for a label named "Cls_1"), else the label itself; ``synonyms[label]`` adds more.

    Raises:
        ValueError: no labels, duplicate or empty labels, or one label's words alone do not fit.
    """
    if not labels:
        raise ValueError("no labels given; pass at least one label, e.g. --labels cat dog")
    cleaned = [str(label).strip() for label in labels]
    if any(not label for label in cleaned):
        raise ValueError(f"empty label in {list(labels)!r}")
    if len(set(cleaned)) != len(cleaned):
        raise ValueError(f"duplicate labels in {list(labels)!r}")
    if template.count("{labels}") != 1:
        raise ValueError(f"prompt template {template!r} must contain '{{labels}}' exactly once")
    synonyms, given = synonyms or {}, words or {}
    words = {label: _unique([*(given.get(label) or [label]), *synonyms.get(label, ())]) for label in cleaned}

    prompts: list[Prompt] = []
    group: list[str] = []
    for label in cleaned:
        trial = _compose(group + [label], words, template, tokenizer)
        if trial.length <= max_tokens:
            group.append(label)
            continue
        if not group:
            raise ValueError(
                f"label {label!r} with its synonyms {words[label][1:]} does not fit in {max_tokens} tokens"
            )
        prompts.append(_compose(group, words, template, tokenizer))
        group = [label]
        if _compose(group, words, template, tokenizer).length > max_tokens:
            raise ValueError(f"label {label!r} with its synonyms does not fit in {max_tokens} tokens")
    prompts.append(_compose(group, words, template, tokenizer))
    return prompts


def _compose(labels: list[str], words: Mapping[str, list[str]], template: str, tokenizer) -> Prompt:
    """Tokenize piece by piece so each word's positions are known, then check the pieces add up
    to the tokenization of the whole text (CLIP splits on spaces and punctuation, so they do)."""
    before, after = template.split("{labels}")
    entries = [(label, word) for label in labels for word in words[label]]
    pieces: list[tuple[str | None, str]] = []
    if before.strip():
        pieces.append((None, before.strip()))
    for i, (label, word) in enumerate(entries):
        if i > 0:
            pieces.append((None, "and" if i == len(entries) - 1 else ","))
        pieces.append((None, "a"))
        pieces.append((label, word))
    if after.strip():
        pieces.append((None, after.strip()))

    position = 1  # after BOS
    tokens: dict[str, list[int]] = {label: [] for label in labels}
    for label, text in pieces:
        count = len(_ids(tokenizer, text))
        if label is not None:
            tokens[label].extend(range(position, position + count))
        position += count
    text = _join(pieces)
    total = len(_ids(tokenizer, text))
    if total != position - 1:
        raise ValueError(
            f"the tokenizer splits {text!r} differently from its words ({total} vs {position - 1} tokens); "
            f"use a prompt template whose {{labels}} stands apart, e.g. 'a photo of {{labels}}'"
        )
    return Prompt(text, {k: tuple(v) for k, v in tokens.items()}, total + 2)


def _join(pieces: list[tuple[str | None, str]]) -> str:
    text = ""
    for _, piece in pieces:
        text += piece if (not text or piece == ",") else " " + piece
    return text


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _unique(items: list[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        item = str(item).strip()
        if item and item not in seen:
            seen.append(item)
    return seen
