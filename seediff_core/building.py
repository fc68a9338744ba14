"""Building model parts from scratch (no download): the word-level CLIP tokenizer files used by the
shapes-world model and by the tests' tiny pipelines."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path


def write_word_tokenizer(folder: str | Path, words: Iterable[str]) -> Path:
    """Write CLIP BPE files (vocab.json, merges.txt) whose merges spell each of ``words`` as one
    token. Other text still tokenizes, into byte-level characters, as in CLIP.

    Load them with ``CLIPTokenizer.from_pretrained(folder, model_max_length=77)``; not with
    ``CLIPTokenizer(vocab_file=..., merges_file=...)``, which in transformers 5 silently builds a
    2-token vocabulary.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(_byte_symbols().values())
    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(symbol, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:
        # Apply the merges so far as BPE would, then add only what this word still needs. New merges
        # rank after the old ones, so words already spelled keep their single token.
        pieces = _bpe(list(word[:-1]) + [word[-1] + "</w>"], {m: r for r, m in enumerate(merges)})
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merges.append(pair)
            vocab.setdefault(pair[0] + pair[1], len(vocab))
            pieces = [pair[0] + pair[1]] + pieces[2:]
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    return folder


def _bpe(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    while len(pieces) > 1:
        rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(pieces, pieces[1:])))
        if rank == math.inf:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def _byte_symbols() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (printable bytes map to themselves)."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
