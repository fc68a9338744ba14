"""The ``seediff`` command.

    seediff segment IMAGE... --labels L1 L2 ... [--model ID_OR_PATH] [--method seediff]
                    [--steps N] [--t T] [--out DIR]

writes, per image, ``DIR/<image stem>/<label>.png`` (0/255 at the original size; an all-zero PNG for
a label with no pixels), ``overlay.png`` and ``result.json``. This layout is stable: other tools read it.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

import click

from .config import DEFAULT_MODEL

log = logging.getLogger("seediff")


def _spread_multi_value_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """Let ``--labels cat dog`` mean ``--labels cat --labels dog``: every word up to the next option."""
    out: list[str] = []
    current = None
    for arg in argv:
        if arg in names:
            current = arg
            continue
        if arg.startswith("-"):
            current = None
        if current is not None:
            out.extend([current, arg])
        else:
            out.append(arg)
    return out


class _Commands(click.Group):
    """Commands that live outside the library load only when asked for: ``serve`` needs the
    Label Studio backend package (``pip install seediff[backend]``), the library does not."""

    lazy = {"serve": ("backend.cli", "serve"), "prelabel": ("backend.cli", "prelabel"), "eval": ("backend.cli", "evaluate")}

    def list_commands(self, ctx):
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx, name):
        if name in self.lazy:
            import importlib

            module, attribute = self.lazy[name]
            try:
                return getattr(importlib.import_module(module), attribute)
            except ImportError as exc:
                raise click.ClickException(f"'seediff {name}' needs the backend extra: pip install 'seediff[backend]' ({exc})")
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default="WARNING", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def main(log_level: str) -> None:
    """Segmentation masks from a diffusion model's attention, with no training."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")


def _settings_options(func):
    options = [
        click.option("--model", default=DEFAULT_MODEL, show_default=True,
                     help="'shapes-world' (ships with seediff, offline), a local SD folder, or a hub id."),
        click.option("--method", default=None, help="Segmentation method (default: seediff)."),
        click.option("--steps", "inversion_steps", type=int, default=None, help="DDIM inversion steps."),
        click.option("--t", "timestep", type=int, default=None, help="Timestep the latent is brought to."),
        click.option("--noise-mode", type=click.Choice(["invert", "noise", "clean"]), default=None,
                     help="DDIM inversion, one-step noising, or the clean latent."),
        click.option("--size", "working_size", type=int, default=None, help="Long side of the working grid."),
        click.option("--device", default=None, help="cuda, mps or cpu (default: the best available)."),
        click.option("--dtype", default=None, help="float16, bfloat16 or float32."),
        click.option("--set", "extra", multiple=True, metavar="NAME=VALUE",
                     help="Any other setting, e.g. --set final_threshold=0.7 (JSON values)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_segmenter(model: str, extra: tuple[str, ...], **settings: Any):
    """Load the model once and build a segmenter with the given settings."""
    from .models import load_model
    from .pipeline import Segmenter

    from .config import parse_assignments

    try:
        settings.update(parse_assignments(extra))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from exc
    settings = {k: v for k, v in settings.items() if v is not None}
    return Segmenter(load_model(model, settings.get("device"), settings.get("dtype")), **settings)


def _split_labels(labels: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for label in labels for part in label.split(",") if part.strip())


class _CannotStart(click.ClickException):
    exit_code = 2  # nothing was processed: the model cannot load, or a setting is refused


def _segmenter_or_fail(model: str, extra: tuple[str, ...], labels: tuple[str, ...] = (), **settings):
    """The segmenter, or one error with the fix and exit code 2 before any image: a model that
    cannot load, a setting out of its range, or labels and settings whose cost is over the limits
    (checked on the model's native square, the largest working grid)."""
    try:
        segmenter = build_segmenter(model, extra, **settings)
        if labels:
            from .limits import check_cost

            check_cost(segmenter.estimate_cost(list(labels)))
        return segmenter
    except (ValueError, RuntimeError) as exc:
        raise _CannotStart(str(exc)) from exc


def _for_each_image(images: tuple[Path, ...], out: Path, desc: str, work) -> None:
    """Run ``work(path, folder)`` per image with a progress bar; one image's failure is reported and
    the others go on; exit code 1 at the end if any failed."""
    from tqdm import tqdm

    from .images import ImageError

    failures = 0
    stems: set[str] = set()
    for path in tqdm(images, desc=desc, unit="image", disable=len(images) < 2, file=sys.stderr):
        folder = out / _unique_stem(path.stem, stems)
        try:
            work(path, folder)
        except (ImageError, ValueError) as exc:
            failures += 1
            click.echo(f"error: {path}: {exc}", err=True)
        except Exception as exc:  # one image's failure must not stop the others
            failures += 1
            click.echo(f"error: {path}: {type(exc).__name__}: {exc}", err=True)
            log.debug("%s", traceback.format_exc())
    click.echo(f"{len(images) - failures} of {len(images)} image(s) written to {out}", err=True)
    if failures:
        sys.exit(1)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", multiple=True, required=True, help="Label names (space- or comma-separated).")
@click.option("--out", default="seediff-out", show_default=True, type=click.Path(path_type=Path))
@_settings_options
def segment(images: tuple[Path, ...], labels: tuple[str, ...], out: Path, model: str, extra: tuple[str, ...], **settings):
    """One mask per label for each IMAGE, at the image's original size."""
    from .images import load_image

    labels = _split_labels(labels)
    segmenter = _segmenter_or_fail(model, extra, labels, **settings)

    def work(path: Path, folder: Path) -> None:
        picture = load_image(path)
        write_result(folder, picture, segmenter.segment(picture, labels), path)

    _for_each_image(images, out, "segment", work)


@main.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--labels", multiple=True, required=True, help="Label names (space- or comma-separated).")
@click.option("--out", default="seediff-heatmaps", show_default=True, type=click.Path(path_type=Path))
@_settings_options
def heatmap(images: tuple[Path, ...], labels: tuple[str, ...], out: Path, model: str, extra: tuple[str, ...], **settings):
    """DAAM-style cross-attention heat maps of each label over each IMAGE.

    Writes DIR/<image stem>/<label>.png (the heat map over the photo) and <label>.heat.png (the
    map alone, 8-bit, original size): what the model looked at for each word.
    """
    import numpy as np
    import torch
    from PIL import Image

    from .images import load_image
    from .overlay import draw_heatmap

    labels = _split_labels(labels)
    segmenter = _segmenter_or_fail(model, extra, labels, **{**settings, "method": "crossattn"})

    def work(path: Path, folder: Path) -> None:
        picture = load_image(path)
        result = segmenter.segment(picture, labels)
        folder.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for item in result.masks:
            heat = torch.nn.functional.interpolate(torch.from_numpy(item.soft)[None, None],
                                                   size=(result.height, result.width), mode="bilinear")[0, 0].numpy()
            name = _unique_stem(safe_filename(item.label), used)
            Image.fromarray(draw_heatmap(np.asarray(picture), heat, caption=item.label)).save(folder / f"{name}.png")
            Image.fromarray((heat.clip(0, 1) * 255).astype(np.uint8)).save(folder / f"{name}.heat.png")

    _for_each_image(images, out, "heatmap", work)


@main.command()
@click.option("--labels", multiple=True, required=True, help="Labels to generate (space- or comma-separated).")
@click.option("--per-label", type=int, default=50, show_default=True, help="Images per label.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Dataset folder (resumable).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="'shapes-world', a local SD folder, or a hub id.")
@click.option("--method", default=None, help="Segmentation method (default: seediff).")
@click.option("--sampling-steps", type=int, default=50, show_default=True, help="DDIM steps of generation.")
@click.option("--guidance", type=float, default=7.0, show_default=True, help="Classifier-free guidance scale.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first image.")
@click.option("--device", default=None)
@click.option("--dtype", default=None)
@click.option("--set", "extra", multiple=True, metavar="NAME=VALUE", help="Any other setting (JSON values).")
@click.option("--to-label-studio", "project_id", type=int, default=None,
              help="Also import into this Label Studio project as tasks with predictions "
                   "(needs LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY, and the backend extra).")
def synth(labels, per_label, out, model, method, sampling_steps, guidance, seed, device, dtype, extra, project_id):
    """Generate images from text with masks: a VOC-style folder and a COCO JSON.

    Each image is sampled from "a photo of a <label>" with guidance while the attention is captured;
    the method turns it into the label's mask. Existing samples are kept, so a stopped run resumes.
    """
    from tqdm import tqdm

    from .synth import Synthesizer, write_dataset

    labels = _split_labels(labels)
    segmenter = _segmenter_or_fail(model, extra, labels, method=method, device=device, dtype=dtype)
    synthesizer = Synthesizer(segmenter, steps=sampling_steps, guidance=guidance)
    with tqdm(total=per_label * len(labels), desc="synth", unit="image", file=sys.stderr) as bar:
        counts = write_dataset(out, synthesizer, labels, per_label, seed=seed, progress=bar.update)
    click.echo(f"{counts['generated']} generated, {counts['skipped']} already there: {counts['total']} in {out}", err=True)
    if project_id is not None:
        try:
            from backend.publish import import_dataset
        except ImportError as exc:
            raise click.ClickException(f"--to-label-studio needs the backend extra: pip install 'seediff[backend]' ({exc})")
        try:
            imported = import_dataset(out, project_id)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{imported} imported into Label Studio project {project_id}", err=True)


def write_result(folder: Path, picture, result, source: Path | None = None) -> None:
    """Write one image's masks, overlay and result.json (the stable output layout)."""
    import numpy as np
    from PIL import Image

    from .overlay import draw_overlay

    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    used: set[str] = {"overlay", "result"}
    for item in result.masks:
        name = _unique_stem(safe_filename(item.label), used) + ".png"
        Image.fromarray(item.mask, mode="L").save(folder / name)
        files[item.label] = name
    legend = [f"{m.label} {m.score:.2f}" for m in result.masks]
    Image.fromarray(draw_overlay(np.asarray(picture), [m.mask for m in result.masks], legend)).save(folder / "overlay.png")
    info = result.to_json()
    info["image"] = str(source) if source is not None else None
    for entry in info["labels"]:
        entry["file"] = files[entry["label"]]
    (folder / "result.json").write_text(json.dumps(info, indent=2))


def safe_filename(label: str) -> str:
    """The label as a file name: path separators and control characters become '_'."""
    cleaned = "".join("_" if c in '/\\:*?"<>|' or ord(c) < 32 else c for c in label).strip(" .")
    return cleaned or "_"


def _unique_stem(stem: str, used: set[str]) -> str:
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(candidate)
    return candidate


def run() -> None:
    """Console-script entry point."""
    main(args=_spread_multi_value_options(sys.argv[1:], ("--labels",)), prog_name="seediff")


if __name__ == "__main__":
    run()
