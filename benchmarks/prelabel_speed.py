"""How fast does bulk pre-labelling go, against the bare segmenter on the same images?

On held-out shapes-world scenes written to a folder (no server, so only our own work is timed):
1. ``Segmenter.segment`` one image at a time (the ceiling: model work only);
2. ``Prelabeler.run`` over the folder's tasks (fetching, the backend's model class, regions, the
   pipeline of chunks), as ``seediff prelabel --from`` runs it, model already loaded;
3. the same on Ray Data with a local Ray, 1 and 2 actors (``--ray``; includes Ray's start and each
   actor's model load, printed apart);
4. ``Segmenter.segment_batch`` at batch 1, 4 and 16: images per second, and the speed-up over batch 1.
With ``--device cuda`` also Stable Diffusion 1.5's architecture with random weights in float16,
one-step noising ("noise" mode), batch 1/4/16/32: images per second on the GPU.

    python benchmarks/prelabel_speed.py [--images 24] [--skip-ray] [--device cuda]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.prelabel import Prelabeler, default_config, tasks_from  # noqa: E402
from backend.settings import BackendSettings  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402
from seediff_core.scenes import SHAPES, TEST_SEEDS, make_scene, render  # noqa: E402

LABELS = list(SHAPES)


def write_scenes(folder: Path, count: int) -> list[Path]:
    paths = []
    for i, seed in enumerate(TEST_SEEDS[500 : 500 + count]):
        path = folder / f"scene{i:03d}.png"
        Image.fromarray(render(make_scene(seed), 256).image).save(path)
        paths.append(path)
    return paths


def bare(segmenter: Segmenter, paths: list[Path]) -> float:
    segmenter.segment(Image.open(paths[0]).convert("RGB"), LABELS)  # warm-up
    segmenter.latent_cache._items.clear()
    start = time.perf_counter()
    for path in paths:
        segmenter.segment(Image.open(path).convert("RGB"), LABELS)
    return len(paths) / (time.perf_counter() - start)


def prelabel(folder: Path, work: Path, batch: int) -> float:
    tasks, root = tasks_from(folder)
    settings = BackendSettings.from_env(model="shapes-world", model_dir=work / "models", local_files_root=root)
    job = Prelabeler(settings, default_config(LABELS), {}, chunk=batch)
    job.runtime.model.get(120)
    job.model.predict_outcomes(tasks[:1])  # warm-up, as the bare run had
    job.runtime.model.get(1).latent_cache._items.clear()
    report = job.run(tasks, upload=lambda pairs: None)
    assert not report.failed, report.failed
    return len(report.done) / report.seconds


def on_ray(folder: Path, work: Path, actors: int, batch: int) -> tuple[float, float]:
    from backend.prelabel_ray import run_on_ray

    tasks, root = tasks_from(folder)
    settings = BackendSettings.from_env(model="shapes-world", model_dir=work / f"ray{actors}", local_files_root=root)
    start = time.perf_counter()
    report = run_on_ray(settings, default_config(LABELS), {}, tasks, project_id=None, address=None, workers=actors,
                        gpus_per_worker=0, batch_size=batch, skip=lambda task: False, collect=lambda *a: None)
    assert not report.failed, report.failed
    return len(report.done) / report.seconds, time.perf_counter() - start


def batched(segmenter: Segmenter, paths: list[Path], batch: int, repeat: int = 1) -> float:
    images = [Image.open(p).convert("RGB") for p in paths]
    segmenter.segment_batch(images[:batch], LABELS, batch_size=batch)  # warm-up
    done, start = 0, time.perf_counter()
    for _ in range(repeat):
        for i in range(0, len(images) - batch + 1, batch):
            segmenter.latent_cache._items.clear()
            segmenter.segment_batch(images[i : i + batch], LABELS, batch_size=batch)
            done += batch
    return done / (time.perf_counter() - start)


def sd15_gpu(device: str) -> None:
    """SD1.5's architecture with random weights, fp16, one-step noising, on the GPU."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from core_speed import build_sd15  # the random-weight SD1.5 of the core benchmark

    model = build_sd15(device, torch.float16, Path(tempfile.mkdtemp(prefix="sd15-random-")))
    segmenter = Segmenter(model, noise_mode="noise", timestep=200)
    image = Image.new("RGB", (512, 512), (120, 90, 60))
    for batch in (1, 4, 16, 32):
        images = [image.rotate(i) for i in range(batch)]
        segmenter.segment_batch(images, ["cat", "dog"], batch_size=batch)
        torch.cuda.synchronize()
        start, rounds = time.perf_counter(), 5
        for _ in range(rounds):
            segmenter.latent_cache._items.clear()
            segmenter.segment_batch(images, ["cat", "dog"], batch_size=batch)
        torch.cuda.synchronize()
        print(f"SD1.5 random weights, {device} fp16, noise mode, batch {batch:>2}: "
              f"{rounds * batch / (time.perf_counter() - start):.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.device != "cpu":
        sd15_gpu(args.device)
        return
    work = Path(tempfile.mkdtemp(prefix="seediff-bench-"))
    folder = work / "images"
    folder.mkdir()
    paths = write_scenes(folder, args.images)
    segmenter = Segmenter.from_name("shapes-world", device="cpu")
    ceiling = bare(segmenter, paths)
    print(f"{args.images} scenes at 256x256, shapes-world, labels {LABELS}, torch threads {torch.get_num_threads()}")
    print(f"Segmenter.segment one by one:      {ceiling:.2f} images/s")
    rate = prelabel(folder, work, args.batch)
    print(f"prelabel (--from folder, batch {args.batch}): {rate:.2f} tasks/s = {rate / ceiling:.2f} of the bare segmenter")
    if not args.skip_ray:
        for actors in (1, 2):
            rate, wall = on_ray(folder, work, actors, args.batch)
            print(f"prelabel --ray, {actors} actor(s):     {rate:.2f} tasks/s ({wall:.1f} s wall, Ray start and model loads included)")
    base = None
    for batch in (1, 4, 16):
        rate = batched(segmenter, paths, batch)
        base = base or rate
        print(f"segment_batch, batch {batch:>2}:           {rate:.2f} images/s (x{rate / base:.2f})")


if __name__ == "__main__":
    main()
