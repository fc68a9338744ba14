"""Do a model's words bind to their regions? A probe of the text encoder and of cross-attention.

For a model folder (or the shipped shapes-world) it prints:
1. the cosine-similarity matrix of the text encoder's output vectors for a caption (a collapsed
   encoder gives 0.99 everywhere, and then no word can bind to a place);
2. per cross-attention layer and timestep, where the attention mass goes: BOS, the content words
   (the shape words of the prompt), the other words, and EOS + padding;
3. per cross-attention layer and timestep, the binding rate: over held-out scenes with exactly two
   objects, how often a word draws more of its attention (mean over the object's pixels) to the
   object it names than to the other object. Shape words with shape-only prompts ("a photo of a
   circle and a square", scenes of two different shapes) and colour words with colour-shape prompts
   ("a photo of a red circle and a blue square", scenes of two different colours). Chance is 0.5.

Latents are the clean images noised in one step at each timestep (the same noise seed per scene),
as SeeDiff's "noise" mode does, at the model's native size.

    python benchmarks/binding.py [--model FOLDER] [--scenes 80] [--timesteps 50 200 500] [--split test|tune] [--flat]
                                 [--history runs/sw/binding.jsonl] [--curve FOLDER/binding.png --log runs/sw/train.log]

--history appends one JSON line (the model's training step, every rate) so a training run keeps a
record of every export; --curve draws binding (best layer and the seed layer) and loss against step
from that history and the training log.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.attention import CROSS, AttentionStore, capture_attention  # noqa: E402
from seediff_core.latents import add_noise, encode_image  # noqa: E402
from seediff_core.models import DiffusionModel, load_model  # noqa: E402
from seediff_core.prompts import build_prompts  # noqa: E402
from seediff_core.scenes import TEST_SEEDS, TUNE_SEEDS, RenderedScene, make_scene, render  # noqa: E402

TEMPLATE = "a photo of {labels}"


def two_object_scenes(seeds, count: int, size: int, distinct: str, patterned: bool = True) -> list[RenderedScene]:
    """The first ``count`` scenes with exactly two visible objects differing in ``distinct``
    ("shape" or "colour")."""
    picked = []
    for seed in seeds:
        scene = make_scene(int(seed), patterned=patterned)
        if len(scene.objects) != 2 or getattr(scene.objects[0], distinct) == getattr(scene.objects[1], distinct):
            continue
        rendered = render(scene, size)
        if all(m.any() for m in rendered.masks):
            picked.append(rendered)
            if len(picked) == count:
                break
    return picked


@torch.no_grad()
def text_vectors(model: DiffusionModel, text: str) -> tuple[list[str], torch.Tensor]:
    """Tokens of ``text`` with BOS and EOS, and the encoder's (T, D) output vectors for them."""
    ids = model.tokenizer(text, return_tensors="pt").input_ids.to(model.device)
    out = model.text_encoder(ids)[0][0].float()
    return model.tokenizer.convert_ids_to_tokens(ids[0].tolist()), out


def cosine_matrix(vectors: torch.Tensor) -> torch.Tensor:
    """(T, D) -> (T, T) cosine similarities."""
    unit = F.normalize(vectors.float(), dim=-1)
    return unit @ unit.T


@torch.no_grad()
def cross_attention(model: DiffusionModel, scenes: list[RenderedScene], labels: list[list[str]], t: int):
    """Run every scene once at timestep ``t`` with its prompt; returns the prompts and the captured
    store (rows = scenes, one (queries, 77) mean map per cross-attention layer)."""
    prompts = [build_prompts(ls, model.tokenizer, TEMPLATE, max_tokens=model.max_tokens)[0] for ls in labels]
    pixels = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float() / 127.5 - 1
    clean = encode_image(model.vae, pixels).to(model.unet.dtype)
    noisy = torch.cat([add_noise(model.scheduler, clean[i : i + 1], t, seed=s.scene.seed) for i, s in enumerate(scenes)])
    ids = model.tokenizer([p.text for p in prompts], padding="max_length", max_length=model.max_tokens,
                          truncation=True, return_tensors="pt").input_ids.to(model.device)
    context = model.text_encoder(ids)[0].to(model.unet.dtype)
    store = AttentionStore()
    with capture_attention(model.unet, store, lambda layer: layer.kind == CROSS):
        model.unet(noisy, t, encoder_hidden_states=context)
    return prompts, store


def object_weights(scene: RenderedScene, grid: tuple[int, int]) -> torch.Tensor:
    """(2, h*w): each object's visible area fraction per cell of the layer's grid."""
    masks = torch.from_numpy(np.stack(scene.masks[:2])).float()[None]
    return F.interpolate(masks, size=grid, mode="area")[0].flatten(1)


def binding_rates(store: AttentionStore, prompts, scenes, words: list[list[str]]) -> dict[str, float]:
    """Per layer: the fraction of (scene, word) pairs where the word's attention, averaged over the
    named object's pixels, exceeds its average over the other object's pixels."""
    rates = {}
    for name in store.names(kind=CROSS):
        attention, (h, w) = store.mean(name), store.grid[name]
        wins = []
        for row, (prompt, scene) in enumerate(zip(prompts, scenes)):
            weights = object_weights(scene, (h, w))
            if (weights.sum(dim=1) == 0).any():
                continue
            for own, label in enumerate(words[row]):
                column = attention[row, :, list(prompt.tokens[label][:1])].mean(dim=1)  # (h*w,)
                mean = (weights @ column) / weights.sum(dim=1)
                wins.append(float(mean[own] > mean[1 - own]))
        rates[name] = float(np.mean(wins)) if wins else float("nan")
    return rates


def attention_mass(store: AttentionStore, prompts) -> dict[str, dict[str, float]]:
    """Per layer: the mean share of attention on BOS, content words, other words, EOS + padding."""
    out = {}
    for name in store.names(kind=CROSS):
        attention = store.mean(name)  # (B, Q, 77)
        shares = {"bos": [], "content": [], "other": [], "eos+pad": []}
        for row, prompt in enumerate(prompts):
            per_key = attention[row].mean(dim=0)
            content = sorted({i for ids in prompt.tokens.values() for i in ids})
            other = [i for i in range(1, prompt.length - 1) if i not in content]
            shares["bos"].append(float(per_key[0]))
            shares["content"].append(float(per_key[content].sum()))
            shares["other"].append(float(per_key[other].sum()))
            shares["eos+pad"].append(float(per_key[prompt.length - 1 :].sum()))
        out[name] = {k: float(np.mean(v)) for k, v in shares.items()}
    return out


def probe(model: DiffusionModel, scenes_count: int, timesteps: list[int], split: str, patterned: bool = True) -> dict:
    """Every number the probe prints, as a dict (see the module docstring)."""
    seeds = TEST_SEEDS if split == "test" else TUNE_SEEDS
    size = model.native_size
    shape_scenes = two_object_scenes(seeds, scenes_count, size, "shape", patterned)
    colour_scenes = two_object_scenes(seeds, scenes_count, size, "colour", patterned)
    result = {"scenes": {"shape": len(shape_scenes), "colour": len(colour_scenes)}, "timesteps": {}}
    caption = "a photo of a red circle and a blue square"
    tokens, vectors = text_vectors(model, caption)
    result["caption"] = {"text": caption, "tokens": tokens, "cosine": cosine_matrix(vectors).tolist()}
    for t in timesteps:
        shape_labels = [[o.shape for o in s.scene.objects] for s in shape_scenes]
        prompts, store = cross_attention(model, shape_scenes, shape_labels, t)
        shape = binding_rates(store, prompts, shape_scenes, shape_labels)
        mass = attention_mass(store, prompts)
        colour_labels = [[o.name for o in s.scene.objects] for s in colour_scenes]
        prompts, store = cross_attention(model, colour_scenes, colour_labels, t)
        colour = binding_rates(store, prompts, colour_scenes, colour_labels)
        grids = {name: store.grid[name] for name in store.names(kind=CROSS)}
        result["timesteps"][t] = {
            name: {"grid": list(grids[name]), "shape": shape[name], "colour": colour[name], "mass": mass[name]}
            for name in store.names(kind=CROSS)
        }
    return result


def print_report(result: dict) -> None:
    caption = result["caption"]
    print(f"text encoder: cosine similarity of the output vectors for {caption['text']!r}")
    tokens = [t.replace("</w>", "") for t in caption["tokens"]]
    print(" " * 16 + "".join(f"{t[:7]:>8}" for t in tokens))
    for token, row in zip(tokens, caption["cosine"]):
        print(f"{token[:15]:>16}" + "".join(f"{v:>8.2f}" for v in row))
    content = [i for i, t in enumerate(tokens) if t in ("red", "circle", "blue", "square")]
    pairs = [caption["cosine"][i][j] for i in content for j in content if i < j]
    print(f"mean cosine between the four content words: {np.mean(pairs):.2f}\n")
    print(f"binding rate over {result['scenes']['shape']} two-shape and {result['scenes']['colour']} two-colour "
          f"held-out scenes (chance 0.50); attention mass with shape-only prompts")
    header = f"{'t':>4} {'layer':<36} {'grid':>5} {'shape':>6} {'colour':>6} {'BOS':>5} {'words':>5} {'other':>5} {'eos+pad':>7}"
    print(header)
    print("-" * len(header))
    for t, layers in result["timesteps"].items():
        for name, row in layers.items():
            mass = row["mass"]
            short = name.replace(".transformer_blocks.0.attn2", "")
            print(f"{t:>4} {short:<36} {row['grid'][0]:>2}x{row['grid'][1]:<2} {row['shape']:>6.2f} {row['colour']:>6.2f} "
                  f"{mass['bos']:>5.2f} {mass['content']:>5.2f} {mass['other']:>5.2f} {mass['eos+pad']:>7.2f}")


def summary(result: dict, seed_grid: int | None = None) -> dict:
    """Best shape and colour binding over layers and timesteps, and the best on the seed grid."""
    rows = [(int(t), name, row) for t, layers in result["timesteps"].items() for name, row in layers.items()]
    best_shape = max(rows, key=lambda r: r[2]["shape"])
    best_colour = max(rows, key=lambda r: r[2]["colour"])
    out = {"shape": best_shape[2]["shape"], "shape_at": [best_shape[0], best_shape[1]],
           "colour": best_colour[2]["colour"], "colour_at": [best_colour[0], best_colour[1]]}
    if seed_grid is not None:
        on_grid = [r for r in rows if r[2]["grid"][0] == seed_grid]
        if on_grid:
            out["seed_grid_shape"] = max(r[2]["shape"] for r in on_grid)
    return out


def draw_curve(history: Path, log: Path | None, out: Path) -> None:
    """Binding vs step from ``history`` (JSON lines of this probe), loss vs step from the training log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]
    records.sort(key=lambda r: r["step"])
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot(steps, [r["summary"]["shape"] for r in records], "o-", label="shape words (best layer)")
    if all("seed_grid_shape" in r["summary"] for r in records):
        ax.plot(steps, [r["summary"]["seed_grid_shape"] for r in records], "s--", label="shape words (seed grid)")
    ax.plot(steps, [r["summary"]["colour"] for r in records], "^-", label="colour words (best layer)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_ylim(0.3, 1.0)
    ax.set_xlabel("training step")
    ax.set_ylabel("binding rate")
    if log is not None and log.is_file():
        points = [(int(m[1]), float(m[2])) for m in re.finditer(r"unet step (\d+) loss ([0-9.]+)", log.read_text())]
        if points:
            twin = ax.twinx()
            twin.plot(*zip(*points), color="tab:red", alpha=0.35, lw=0.8, label="loss")
            twin.set_ylabel("denoising loss", color="tab:red")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def save_record(model: DiffusionModel, result: dict, record: dict, json_path: Path | None,
                history: Path | None) -> dict:
    """Print a probe's ``record`` with the model's training step and source, write the full
    ``result`` to ``json_path`` and append the record to the JSON-lines ``history`` (if given)."""
    step_file = model.folder / "training_step.txt" if model.folder else None
    step = int(step_file.read_text()) if step_file and step_file.is_file() else None
    record = {"step": step, **record, "model": str(model.source)}
    print(json.dumps(record))
    if json_path:
        json_path.write_text(json.dumps(result, indent=1))
    if history:
        with open(history, "a") as fh:
            fh.write(json.dumps(record) + "\n")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-world")
    parser.add_argument("--scenes", type=int, default=80, help="two-object scenes per check (at least 60)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 500])
    parser.add_argument("--split", choices=["test", "tune"], default="test")
    parser.add_argument("--flat", action="store_true", help="flat-coloured scenes instead of patterned ones")
    parser.add_argument("--seed-grid", type=int, default=None, help="side of the grid SeeDiff seeds from")
    parser.add_argument("--history", type=Path, help="append this run's numbers as one JSON line")
    parser.add_argument("--curve", type=Path, help="draw the history's binding (and the log's loss) vs step")
    parser.add_argument("--log", type=Path, help="training log with 'unet step N loss X' lines")
    parser.add_argument("--json", type=Path, help="write the full numbers here")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_model(args.model, "cpu", "float32")
    result = probe(model, args.scenes, args.timesteps, args.split, patterned=not args.flat)
    print_report(result)
    save_record(model, result, {"summary": summary(result, args.seed_grid)}, args.json, args.history)
    if args.curve:
        draw_curve(args.history, args.log, args.curve)


if __name__ == "__main__":
    main()
