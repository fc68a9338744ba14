"""Cost of seediff's stages on a full-size Stable Diffusion 1.5 architecture (random weights, same FLOPs).

Builds SD1.5's VAE, UNet and text encoder from their configs (no download), then at 512x512 times:
VAE encode, one bare UNet forward (SDPA everywhere), the capture pass SeeDiff needs, DDIM inversion,
seed expansion + post-processing, and the whole ``Segmenter.segment``. Prints:

  overhead      = end-to-end / (its UNet forwards x bare forward + VAE encode)     target <= 1.10
  capture_mem   = extra peak memory of the capture pass over a bare forward      target <= 1.0 GB
  method_cost   = expansion + post-processing in bare-UNet-forward equivalents    target <= 0.5

Memory is measured in separate processes (peak RSS on CPU, max allocated on CUDA) so that one
measurement cannot hide in another's peak.

    python benchmarks/core_speed.py [--device cpu|cuda] [--dtype float32|float16] [--steps 10] [--labels 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.attention import AttentionStore, capture_attention, unet_layers  # noqa: E402
from seediff_core.config import SeediffConfig  # noqa: E402
from seediff_core.methods import get_method  # noqa: E402
from seediff_core.models import DiffusionModel  # noqa: E402
from seediff_core.pipeline import Segmenter  # noqa: E402

WORDS = ["a", "photo", "of", "and", ",", "cat", "dog", "bird", "person", "car", "tree", "sky", "road"]


def build_sd15(device: str, dtype: torch.dtype, folder: Path) -> DiffusionModel:
    """SD1.5's architecture with random weights (its published configs, written out here)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from seediff_core.building import write_word_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
    )
    write_word_tokenizer(folder, WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    dev = torch.device(device)
    for module in (unet, vae, text_encoder):
        module.to(dev, dtype).eval().requires_grad_(False)
    return DiffusionModel("sd15-architecture (random weights)", "configs", vae, unet, text_encoder, tokenizer,
                          scheduler, dev, dtype, None)


def timed(fn, device: torch.device, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


class _PeakRSS:
    """Peak resident memory while the context is open, minus the resident memory when it opened.
    ru_maxrss cannot be used: building the random model peaks higher than any forward."""

    def __enter__(self):
        import os
        import threading

        self._page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self._page

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        self.extra = self.peak - self.start


def memory_probe(args) -> None:
    """Child process: extra peak memory of one bare forward or one capture pass (printed as JSON)."""
    dtype = getattr(torch, args.dtype)
    model = build_sd15(args.device, dtype, Path(args.tmp))
    latents = torch.randn(1, 4, 64, 64, device=model.device, dtype=dtype)
    context = torch.randn(1, 77, 768, device=model.device, dtype=dtype)
    config = SeediffConfig()
    names = get_method("seediff").layers(unet_layers(model.unet), config)
    with torch.no_grad():
        model.unet(latents, 200, encoder_hidden_states=context)  # warm-up: allocator and kernels
        if model.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        with _PeakRSS() as rss:
            if args.probe == "capture":
                store = AttentionStore()
                with capture_attention(model.unet, store, lambda layer: layer.name in names, config.attention_chunk):
                    model.unet(latents, 200, encoder_hidden_states=context)
            else:
                model.unet(latents, 200, encoder_hidden_states=context)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before if model.device.type == "cuda" else rss.extra
    print(json.dumps({"extra_bytes": extra}))


def probe(kind: str, args) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--probe", kind, "--device", args.device, "--dtype", args.dtype, "--tmp", args.tmp],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--steps", type=int, default=10, help="DDIM inversion steps")
    parser.add_argument("--labels", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    parser.add_argument("--probe", choices=["bare", "capture"], help=argparse.SUPPRESS)
    parser.add_argument("--tmp", default="/tmp/seediff-bench-tokenizer", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        return memory_probe(args)

    dtype = getattr(torch, args.dtype)
    model = build_sd15(args.device, dtype, Path(args.tmp))
    device = model.device
    labels = ["cat", "dog", "bird", "person", "car", "tree"][: args.labels]
    config = SeediffConfig(inversion_steps=args.steps, timestep=200)
    segmenter = Segmenter(model, inversion_steps=args.steps, timestep=200, latent_cache_size=0)
    pixels = torch.rand(1, 3, 512, 512, device=device, dtype=dtype) * 2 - 1
    latents = torch.randn(1, 4, 64, 64, device=device, dtype=dtype)
    context = torch.randn(1, 77, 768, device=device, dtype=dtype)
    names = get_method("seediff").layers(unet_layers(model.unet), config)
    repeat = 3 if device.type == "cuda" else 1

    with torch.no_grad():
        model.unet(latents, 200, encoder_hidden_states=context)  # warm-up
        t_vae = timed(lambda: model.vae.encode(pixels).latent_dist.mean, device, repeat)
        t_unet = timed(lambda: model.unet(latents, 200, encoder_hidden_states=context), device, repeat)

        def capture_pass():
            with capture_attention(model.unet, AttentionStore(), lambda layer: layer.name in names, config.attention_chunk):
                model.unet(latents, 200, encoder_hidden_states=context)

        t_capture = timed(capture_pass, device, repeat)

    from PIL import Image
    import numpy as np

    photo = Image.fromarray((np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8))
    segmenter.segment(photo, labels)  # warm-up of the whole path
    result = segmenter.segment(photo, labels)
    timings = result.timings
    forwards = args.steps + len(result.prompts)
    ideal = forwards * t_unet + t_vae
    overhead = timings["total"] / ideal
    method_cost = timings["method"] / t_unet

    bare, captured = probe("bare", args), probe("capture", args)
    extra_gb = (captured["extra_bytes"] - bare["extra_bytes"]) / 2**30

    rows = [
        ("device", f"{device} {args.dtype}" + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")),
        ("VAE encode 512x512", f"{t_vae:.3f} s"),
        ("UNet forward, bare (SDPA)", f"{t_unet:.3f} s"),
        ("UNet forward with SeeDiff capture", f"{t_capture:.3f} s  (+{100 * (t_capture / t_unet - 1):.1f} %)"),
        (f"inversion, {args.steps} steps", f"{timings['invert']:.3f} s  ({timings['invert'] / t_unet:.2f} forwards)"),
        (f"attention pass(es), {len(result.prompts)} prompt(s)", f"{timings['attention']:.3f} s"),
        (f"expansion + post-processing, {len(labels)} labels", f"{timings['method']:.3f} s"),
        ("end-to-end segment()", f"{timings['total']:.3f} s"),
        ("overhead: end-to-end / (forwards x bare + VAE)", f"{overhead:.3f}  (target <= 1.10) {'OK' if overhead <= 1.10 else 'MISSED'}"),
        ("capture extra peak memory", f"{extra_gb:.3f} GB  (target <= 1.0) {'OK' if extra_gb <= 1.0 else 'MISSED'}"),
        ("method cost in UNet forwards", f"{method_cost:.3f}  (target <= 0.5) {'OK' if method_cost <= 0.5 else 'MISSED'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
