"""Train the shapes-world text-to-image model from scratch, in the diffusers Stable Diffusion layout.

Stages, each resumable and each writing under --work (never into git):
  vae     AutoencoderKL (x8, 4 latent channels) on 64x64 crops of 128x128 scenes (it is fully
          convolutional, so crops cost a quarter and transfer to full frames). --init FOLDER starts
          from a model folder's VAE (fine-tuning) instead of from scratch.
  cache   Encode N training scenes once (posterior mean) so the UNet stage never runs the encoder,
          rendered at --size; --touching and --flat give the share of scenes drawn with touching
          objects and flat colours (each scene's kind is stored with its latent, for its caption).
  unet    UNet2DConditionModel trained on the denoising loss only, with 10 % caption dropout for
          classifier-free guidance and an EMA copy. No attention or mask supervision of any kind:
          the attention that seediff reads must emerge on its own.
          The text encoder is a CLIPTextModel with no transformer layer (token + position
          embeddings and the final layer norm), frozen at its seeded random initialisation, as
          Stable Diffusion keeps CLIP frozen: every word keeps a vector of its own. Trained jointly,
          a 3-layer encoder collapsed (every output vector of a caption at cosine 0.99 to the
          others), so no word could bind to a place. --init FOLDER starts the UNet from a model
          folder's UNet; its cross-attention keys and values (which read the text) are kept only if
          that folder's text encoder is this one, else they start fresh. The latent grid comes from
          the cache, so a model trained at 128 px can continue at 256 px (its convolutions and
          attention are resolution-free).
  export  Write the EMA weights with save_pretrained (fp16) to --out, e.g. seediff_core/weights/shapes-world.

Usage (the shipped model's recipe; see its README for steps and times):
  python tools/train_shapes_world.py vae --work runs/sw --minutes 45 [--init seediff_core/weights/shapes-world]
  python tools/train_shapes_world.py cache --work runs/sw --scenes 50000
  torchrun --nproc_per_node 2 tools/train_shapes_world.py unet --work runs/sw --minutes 300 [--init FOLDER]
  python tools/train_shapes_world.py export --work runs/sw --out seediff_core/weights/shapes-world

One thread per process: on a shared 2-core machine, two single-thread processes (gradients
averaged by torch.distributed) keep going when the other core is busy, where one 2-thread process
slows down many times over.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seediff_core.building import write_word_tokenizer  # noqa: E402
from seediff_core.scenes import caption_for, caption_words, make_scene, render  # noqa: E402

IMAGE_SIZE = 128  # v1 and v2; v3 renders at 256 (--size): a 32x32 latent, attention at 32/16/8
VAE_FACTOR = 8
TEXT_DIM = 128
MAX_TOKENS = 77
CAPTION_DROPOUT = 0.1
VAE_SEED_OFFSET = 5_000_000  # VAE crops come from a different part of the training range than the cache


# ----------------------------------------------------------------------------- components


def vae_config(image_size: int = IMAGE_SIZE) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=image_size,
    )


def unet_config(latent_size: int = IMAGE_SIZE // VAE_FACTOR) -> dict:
    # SD1.5's topology scaled down: four levels with attention in the first three, like SD's 64/32/16/8
    # (at 256 px: 32/16/8 and the mid block at 4).
    return dict(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(64, 128, 128, 128),
        layers_per_block=1,
        attention_head_dim=(2, 4, 4, 4),  # diffusers' name for the number of heads
        cross_attention_dim=TEXT_DIM,
        norm_num_groups=16,
    )


def scheduler_config() -> dict:
    # Stable Diffusion 1.5's noise schedule.
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )


def write_tokenizer(folder: Path) -> None:
    write_word_tokenizer(folder, caption_words())


def load_tokenizer(folder: Path):
    from transformers import CLIPTokenizer

    # from_pretrained(folder), not CLIPTokenizer(vocab_file=...): the latter silently builds a
    # 2-token vocabulary in transformers 5.
    tok = CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)
    for word in caption_words():
        ids = tok(word).input_ids
        if len(ids) != 3:
            raise RuntimeError(f"tokenizer splits {word!r} into {ids}; fix the merges in write_word_tokenizer")
    return tok


def text_encoder_config(vocab_size: int) -> dict:
    return dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_DIM,
        intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=0,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        projection_dim=TEXT_DIM,
    )


# ----------------------------------------------------------------------------- helpers


def log(work: Path, message: str) -> None:
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
    print(line, flush=True)
    with open(work / "train.log", "a") as fh:
        fh.write(line + "\n")


def save_atomic(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) images -> (B, 3, H, W) float in [-1, 1]."""
    arr = np.stack(images).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------- stage: vae


def train_vae(args) -> None:
    from diffusers import AutoencoderKL

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    vae = AutoencoderKL(**vae_config(args.size))
    opt = torch.optim.Adam(vae.parameters(), lr=args.lr)
    ckpt = work / "vae.ckpt"
    step = 0
    if args.init and not ckpt.exists():
        vae.load_state_dict(AutoencoderKL.from_pretrained(Path(args.init) / "vae").float().state_dict())
        log(work, f"vae: starting from {args.init}")
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        vae.load_state_dict(state["vae"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        log(work, f"vae: resumed at step {step}")
    rng = np.random.default_rng(1000 + step)
    deadline = time.time() + args.minutes * 60
    last_save, losses, t0 = time.time(), [], time.time()
    while time.time() < deadline and step < args.steps:
        crops = []
        for _ in range(args.batch):
            image = render(make_scene(VAE_SEED_OFFSET + int(rng.integers(1_000_000))), args.size).image
            y, x = rng.integers(0, args.size - args.crop + 1, size=2)
            crops.append(image[y : y + args.crop, x : x + args.crop])
        x = to_tensor(crops)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 + MSE for colour, an L1 on image gradients to keep the shapes' edges crisp without a GAN.
        grad = lambda t: (t[..., 1:, :] - t[..., :-1, :], t[..., :, 1:] - t[..., :, :-1])  # noqa: E731
        edge = sum(F.l1_loss(a, b) for a, b in zip(grad(recon), grad(x)))
        loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + 0.5 * edge + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        losses.append(loss.item())
        if step % 25 == 0:
            log(work, f"vae step {step} loss {np.mean(losses):.4f} {(time.time() - t0) / len(losses):.2f}s/step")
            losses, t0 = [], time.time()
        if time.time() - last_save > 600:
            save_atomic({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
            last_save = time.time()
    save_atomic({"vae": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt)
    vae.eval()
    with torch.no_grad():
        test = [render(make_scene(s, touching=s % 2 == 1), args.size).image for s in range(9_000_000, 9_000_032)]
        x = to_tensor(test)
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = F.mse_loss((recon + 1) / 2, (x + 1) / 2).item()
    log(work, f"vae done at step {step}: full-frame PSNR at {args.size} px {10 * math.log10(1 / mse):.2f} dB")


# ----------------------------------------------------------------------------- stage: cache


def build_cache(args) -> None:
    from diffusers import AutoencoderKL

    work = Path(args.work)
    vae = AutoencoderKL(**vae_config(args.size))
    vae.load_state_dict(torch.load(work / "vae.ckpt", weights_only=False)["vae"])
    vae.eval()
    rank, world = _dist_rank_world()
    part = work / f"cache_part{rank}.pt"
    seeds = [s for s in range(args.scenes) if s % world == rank]
    done = torch.load(part, weights_only=False) if part.exists() else {"seeds": [], "latents": [], "kinds": []}
    todo = seeds[len(done["seeds"]) :]
    log(work, f"cache rank {rank}: {len(done['seeds'])} done, {len(todo)} to encode at {args.size} px")
    last_save = time.time()
    with torch.no_grad():
        for i in range(0, len(todo), 64):
            chunk = todo[i : i + 64]
            kinds = [scene_kind(s, args.touching, args.flat) for s in chunk]
            x = to_tensor([render(make_scene(s, **kind), args.size).image for s, kind in zip(chunk, kinds)])
            done["latents"].append(vae.encode(x).latent_dist.mean.half())
            done["seeds"].extend(chunk)
            done["kinds"].extend(kinds)
            if time.time() - last_save > 300:
                save_atomic(done, part)
                last_save = time.time()
                log(work, f"cache rank {rank}: {len(done['seeds'])}/{len(seeds)}")
    save_atomic(done, part)
    _dist_barrier()
    if rank == 0:
        parts = [torch.load(work / f"cache_part{r}.pt", weights_only=False) for r in range(world)]
        seeds_all = torch.tensor([s for p in parts for s in p["seeds"]])
        kinds = [k for p in parts for k in p["kinds"]]
        latents = torch.cat([torch.cat(p["latents"]) for p in parts])
        std = latents.float().std().item()
        save_atomic({"seeds": seeds_all, "kinds": kinds, "latents": latents, "scaling_factor": 1.0 / std,
                     "size": args.size}, work / "latents.pt")
        touching = sum(k["touching"] for k in kinds) / len(kinds)
        flat = sum(not k["patterned"] for k in kinds) / len(kinds)
        log(work, f"cache: {len(seeds_all)} latents at {args.size} px ({touching:.0%} touching, {flat:.0%} flat), "
                  f"std {std:.4f}, scaling_factor {1 / std:.5f}")


def scene_kind(seed: int, touching: float, flat: float) -> dict:
    """``make_scene`` options of training scene ``seed``: touching objects for a ``touching`` share
    of the seeds and flat colours for a ``flat`` share, each decided by the seed alone (stable across
    ranks and resumes, and independent of each other)."""
    draw = np.random.default_rng([seed, 0xC0DE]).random(2)
    return {"touching": bool(draw[0] < touching), "patterned": bool(draw[1] >= flat)}


# ----------------------------------------------------------------------------- stage: unet


class TextToLatent(torch.nn.Module):
    """UNet and its frozen text encoder in one module, so checkpoints and exports hold both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder.requires_grad_(False)

    def forward(self, noisy, timesteps, input_ids):
        with torch.no_grad():
            context = self.text_encoder(input_ids)[0]
        return self.unet(noisy, timesteps, context).sample


def _dist_rank_world() -> tuple[int, int]:
    if "RANK" in os.environ and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    if torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _dist_barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def build_unet_and_text(work: Path, init: str | None = None, latent_size: int = IMAGE_SIZE // VAE_FACTOR):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    write_tokenizer(work / "tokenizer")
    tokenizer = load_tokenizer(work / "tokenizer")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(latent_size))
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(len(tokenizer))))
    if init:
        old = UNet2DConditionModel.from_pretrained(Path(init) / "unet").float().state_dict()
        fresh = unet.state_dict()
        old_text = CLIPTextModel.from_pretrained(Path(init) / "text_encoder").float().state_dict()
        same_text = all(torch.allclose(old_text[k].float(), v.float(), atol=1e-3)
                        for k, v in text_encoder.state_dict().items() if k in old_text)
        # Keys and values learnt on another text encoder's vectors would read noise: start them fresh.
        keep = old if same_text else {k: v for k, v in old.items() if not any(p in k for p in ("attn2.to_k", "attn2.to_v"))}
        unet.load_state_dict({**fresh, **keep})
        log(work, f"unet: starting from {init} ({'same' if same_text else 'another'} text encoder: "
                  f"cross-attention keys and values {'kept' if same_text else 'fresh'})")
    return tokenizer, TextToLatent(unet, text_encoder)


def train_unet(args) -> None:
    from diffusers import DDIMScheduler

    work = Path(args.work)
    rank, world = _dist_rank_world()
    cache = torch.load(work / "latents.pt", weights_only=False)
    latents, seeds, scaling = cache["latents"], cache["seeds"], cache["scaling_factor"]
    kinds = cache.get("kinds") or [{"touching": False, "patterned": True}] * len(seeds)  # v2 caches
    tokenizer, model = build_unet_and_text(work, args.init if not (work / "unet.ckpt").exists() else None,
                                           latents.shape[-1])
    ema = {k: v.detach().clone().float() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.unet.parameters(), lr=args.lr, weight_decay=0.01)
    step = 0
    ckpt = work / "unet.ckpt"
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        ema = state["ema"]
        opt.load_state_dict(state["opt"])
        step = state["step"]
        if rank == 0:
            log(work, f"unet: resumed at step {step}")
    for group in opt.param_groups:
        group["lr"] = args.lr
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    scheduler = DDIMScheduler(**scheduler_config())
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    rng = np.random.default_rng(10_000 * rank + step)
    gen = torch.Generator().manual_seed(10_000 * rank + step)
    per_rank = args.batch // world
    deadline = time.time() + args.minutes * 60
    last_save, last_export, losses, t0 = time.time(), time.time(), [], time.time()
    while step < args.steps:
        # Every rank must stop at the same step, so rank 0 decides and broadcasts. A file named STOP
        # in --work ends the run early, as the deadline does (checkpoint, export, probe).
        stop = torch.tensor([float(time.time() >= deadline or (work / "STOP").exists())])
        if world > 1:
            torch.distributed.broadcast(stop, 0)
        if stop.item():
            break
        idx = torch.from_numpy(rng.integers(0, len(seeds), size=per_rank))
        x0 = latents[idx].float() * scaling
        captions = [
            "" if rng.random() < CAPTION_DROPOUT else caption_for(make_scene(int(seeds[i]), **kinds[i]), rng) for i in idx
        ]
        ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True, return_tensors="pt")
        t = torch.randint(0, 1000, (per_rank,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        pred = ddp(noisy, t, ids.input_ids)
        # Min-SNR-5 weighting of the epsilon loss (Hang et al. 2023): the same denoising objective,
        # reweighted over timesteps, which converges several times faster.
        weight = torch.clamp(snr[t], max=5.0) / snr[t]
        loss = (weight * (pred - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        warm = min(1.0, (step + 1) / 500)
        for group in opt.param_groups:
            group["lr"] = args.lr * warm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.unet.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    ema[k].mul_(decay).add_(v.float(), alpha=1 - decay)
                else:
                    ema[k].copy_(v)
        losses.append(loss.item())
        if rank != 0:
            continue
        if step % 50 == 0:
            log(work, f"unet step {step} loss {np.mean(losses):.4f} {(time.time() - t0) / len(losses):.2f}s/step")
            losses, t0 = [], time.time()
        if time.time() - last_save > 600:
            save_atomic({"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step}, ckpt)
            last_save = time.time()
        if time.time() - last_export > args.export_minutes * 60:
            export(work, work / "export", ema, step)
            probe_binding(work, args)
            last_export = time.time()
    if rank == 0:
        save_atomic({"model": model.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step}, ckpt)
        export(work, work / "export", ema, step)
        probe_binding(work, args, wait=True)
        log(work, f"unet: stopped at step {step}")


def probe_binding(work: Path, args, wait: bool = False) -> None:
    """Run benchmarks/binding.py and benchmarks/touching_probe.py on the fresh export in the
    background (one thread, one after the other), appending to work/binding.jsonl and
    work/probe.jsonl and redrawing work/binding.png and work/probe.png, so every export leaves its
    binding rates and its touching-objects probe."""
    if not args.probe:
        return
    import shlex
    import subprocess

    export_copy = work / "probed"
    shutil.rmtree(export_copy, ignore_errors=True)
    shutil.copytree(work / "export", export_copy)  # the next export may replace the folder mid-probe
    if args.init and (Path(args.init) / "seediff.json").is_file():
        # The methods' settings tuned for the model this run started from: without them the probe
        # would measure the library's Stable Diffusion defaults on a model they do not suit.
        shutil.copy(Path(args.init) / "seediff.json", export_copy / "seediff.json")
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    seed_grid = json.loads((export_copy / "unet" / "config.json").read_text())["sample_size"] // 2  # seed_factor 2
    binding = [sys.executable, str(benchmarks / "binding.py"), "--model", str(export_copy), "--threads", "1",
               "--scenes", str(args.probe), "--seed-grid", str(seed_grid), "--history", str(work / "binding.jsonl"),
               "--curve", str(work / "binding.png"), "--log", str(work / "train.log"), "--timesteps", "50", "200"]
    touching = [sys.executable, str(benchmarks / "touching_probe.py"), "--model", str(export_copy), "--threads", "1",
                "--scenes", str(max(1, args.probe // 6)), "--timesteps", "50", "200",
                "--history", str(work / "probe.jsonl"), "--curve", str(work / "probe.png")]
    with open(work / "binding.out", "a") as out:
        process = subprocess.Popen(["bash", "-c", f"{shlex.join(binding)}; {shlex.join(touching)}"],
                                   stdout=out, stderr=subprocess.STDOUT)
    if wait:
        process.wait()


# ----------------------------------------------------------------------------- stage: export


def export(work: Path, out: Path, ema: dict | None = None, step: int | None = None) -> None:
    """Write a diffusers StableDiffusionPipeline folder (fp16 weights) from the EMA weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline

    cache = torch.load(work / "latents.pt", weights_only=False)
    size = cache.get("size", IMAGE_SIZE)  # caches before v3 were all 128 px
    tokenizer, model = build_unet_and_text(work, latent_size=size // VAE_FACTOR)
    if ema is None:
        state = torch.load(work / "unet.ckpt", weights_only=False)
        ema, step = state["ema"], state["step"]
    model.load_state_dict(ema)
    vae = AutoencoderKL(**vae_config(size), scaling_factor=cache["scaling_factor"])
    vae.load_state_dict(torch.load(work / "vae.ckpt", weights_only=False)["vae"])
    pipe = StableDiffusionPipeline(
        vae=vae.half(),
        text_encoder=model.text_encoder.half(),
        tokenizer=tokenizer,
        unet=model.unet.half(),
        scheduler=DDIMScheduler(**scheduler_config()),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp)
    # Also keep the BPE files so transformers 4's slow CLIPTokenizer can load the folder.
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(work / "tokenizer" / name, tmp / "tokenizer" / name)
    (tmp / "training_step.txt").write_text(f"{step}\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    log(work, f"exported step {step} to {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["vae", "cache", "unet", "export"])
    parser.add_argument("--work", default="runs/shapes_world")
    parser.add_argument("--out", default="seediff_core/weights/shapes-world")
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--scenes", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=IMAGE_SIZE, help="image side the scenes are rendered at")
    parser.add_argument("--touching", type=float, default=0.0, help="cache: share of scenes whose objects touch")
    parser.add_argument("--flat", type=float, default=0.0, help="cache: share of flat-coloured scenes")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--export-minutes", type=float, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", help="model folder to start the vae or unet stage from")
    parser.add_argument("--probe", type=int, default=0, metavar="SCENES",
                        help="after each export, run benchmarks/binding.py on this many scenes in the background")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.stage == "vae":
        args.batch, args.lr = args.batch or 16, args.lr or 1e-3
        train_vae(args)
    elif args.stage == "cache":
        build_cache(args)
    elif args.stage == "unet":
        args.batch, args.lr = args.batch or 32, args.lr or 4e-4
        train_unet(args)
    else:
        export(Path(args.work), Path(args.out))


if __name__ == "__main__":
    main()
