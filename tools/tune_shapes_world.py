"""Tune a method's settings for a model on the TUNE split of shapes-world scenes (never the test split).

Coordinate search: each setting in turn tries its candidate values with the others fixed, keeping the
best mean of mIoU over the three label variants ("shapes", "colour-shapes", and "all-shapes", where
masks given to absent shapes count against them) and over the tune splits: the default scenes (objects
mostly apart) and, unless --apart-only, as many touching scenes (every object touching another);
repeated for --rounds rounds.
With --write, the winning settings that differ from the method's own defaults go into the method's
section of ``<model folder>/seediff.json`` (``{"seediff": {...}, "t2m": {...}}``); other sections stay.

    python tools/tune_shapes_world.py --scenes 60 [--method seediff] [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.config import make_config, parse_assignments  # noqa: E402
from seediff_core.evaluation import LABEL_VARIANTS, evaluate_scenes  # noqa: E402
from seediff_core.methods import method_defaults  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import TUNE_SEEDS  # noqa: E402

SEARCH = {
    "seediff": {
        "noise_mode": ["invert", "noise"],
        "timestep": [50, 100, 200, 300, 500],
        "factors": [(1, (1,)), (2, (2, 1)), (4, (4, 2, 1)), (2, (4, 2, 1)), (4, (2, 1)), (2, (1,))],
        "seed_layers": [("down", "mid", "up"), ("up",), ("up_blocks.2.attentions.1",), ("up_blocks.3",)],
        "label_per_object": [False, True],
        "object_colour_tolerance": [0.1, 0.15, 0.25],
        "object_min_attention": [0.0, 0.15, 0.25, 0.35],
        "seed_competition": [False, True],
        "seed_competition_ratio": [1.5, 2.0, 3.0],
        "expansion_threshold": [0.2, 0.3, 0.4, 0.5],
        "final_threshold": [0.5, 0.65, 0.8],
        "pamr_iterations": [0, 10, 30, 60],
        "pamr_std_factor": [0.1, 0.2, 0.4],
    },
    "crossattn": {
        "noise_mode": ["invert", "noise"],
        "timestep": [50, 100, 200, 300, 500],
    },
    "diffumask": {
        "noise_mode": ["invert", "noise"],
        "timestep": [50, 100, 200, 300, 500],
        "diffumask_beta": [4.0, 8.0, 16.0],
    },
    "t2m": {
        "noise_mode": ["invert", "noise"],
        "timestep": [50, 100, 150, 300, 500],
        "t2m_tau": [0.3, 0.4, 0.5, 0.6],
        "t2m_box_threshold": [0.1, 0.2, 0.3, 0.5],
    },
    "diffseg": {
        "noise_mode": ["clean", "invert"],
        "timestep": [100, 200, 300, 500],
        "diffseg_kl_thresholds": [(0.01,) * 3, (0.03,) * 3, (0.1,) * 3, (0.3,) * 3, (0.7,) * 3, (0.9,) * 3, (1.1,) * 3],
        "diffseg_vote_threshold": [0.8, 1.0, 1.2],
    },
}


def expand(name: str, value) -> dict:
    if name == "factors":
        return {"seed_factor": value[0], "expansion_factors": value[1]}
    return {name: value}


def score(segmenter: Segmenter, seeds, settings: dict, size: int, variants=LABEL_VARIANTS,
          splits: tuple[bool, ...] = (False, True)) -> float:
    """Mean mIoU over the label variants and the splits (``touching`` False/True); in "all-shapes"
    the absent shapes' masks count against them, so settings that label what is not there lose."""
    values = [evaluate_scenes(segmenter, seeds, size, variant, touching=touching, **settings).miou
              for touching in splits for variant in variants]
    return sum(values) / len(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-world")
    parser.add_argument("--method", default="seediff", choices=sorted(SEARCH))
    parser.add_argument("--scenes", type=int, default=60)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=VALUE",
                        help="fixed settings for this model (kept in the written section)")
    parser.add_argument("--variants", nargs="+", default=list(LABEL_VARIANTS), choices=LABEL_VARIANTS,
                        help="label variants whose mean mIoU is maximised")
    parser.add_argument("--only", nargs="+", default=None, help="search only these settings")
    parser.add_argument("--apart-only", action="store_true", help="tune on the default scenes only, not the touching ones")
    parser.add_argument("--write", action="store_true", help="write the result to the model's seediff.json")
    args = parser.parse_args()

    segmenter = Segmenter.from_name(args.model)
    splits = (False,) if args.apart_only else (False, True)
    segmenter.latent_cache.size = 4 * args.scenes * len(splits)  # every scene's latents at every timestep tried stay cached
    seeds = list(TUNE_SEEDS[: args.scenes])
    best: dict = {"method": args.method}
    best.update(parse_assignments(args.extra))
    best_score = score(segmenter, seeds, best, args.size, args.variants, splits)
    print(f"start {best_score:.4f} with the model's current settings", flush=True)
    for round_index in range(args.rounds):
        for name, values in SEARCH[args.method].items():
            if args.only and name not in args.only:
                continue
            for value in values:
                trial = {**best, **expand(name, value)}
                if trial == best:
                    continue
                start = time.perf_counter()
                try:
                    value_score = score(segmenter, seeds, trial, args.size, args.variants, splits)
                except ValueError as exc:  # e.g. layers this model lacks at that factor
                    print(f"round {round_index + 1} {name}={value}: not applicable ({exc})", flush=True)
                    continue
                print(f"round {round_index + 1} {name}={value}: {value_score:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
                if value_score > best_score + 1e-4:
                    best, best_score = trial, value_score
            print(f"-> best so far {best_score:.4f}: {json.dumps(best)}", flush=True)
    # Against the method's own defaults (what it would run without the model's seediff.json).
    defaults = make_config(method_defaults=method_defaults(), method=args.method).to_dict()
    final = segmenter.config_for(**best).to_dict()
    tuned = {k: v for k, v in final.items() if v != defaults[k] and k not in ("model", "device", "dtype", "method")}
    print(json.dumps({"score": best_score, "settings": tuned}, indent=2))
    if args.write:
        if segmenter.model.folder is None:
            raise SystemExit("the model has no local folder to write seediff.json into")
        path = segmenter.model.folder / "seediff.json"
        current = json.loads(path.read_text()) if path.is_file() else {}
        current[args.method] = tuned
        path.write_text(json.dumps(current, indent=2) + "\n")
        print(f"wrote the {args.method!r} section of {path}")


if __name__ == "__main__":
    main()
