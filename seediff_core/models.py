"""Loading a Stable-Diffusion-layout model (vae, unet, text_encoder, tokenizer, scheduler).

Building is kept apart from inference: ``load_model`` returns a ``DiffusionModel`` that the
segmenter receives already built. Loaded models are cached per (source, device, dtype), so a
process that segments many images loads once.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DEFAULT_MODEL

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# Models that ship with the package, loadable by name.
REGISTRY = {"shapes-world": WEIGHTS_DIR / "shapes-world"}
COMPONENTS = ("vae", "unet", "text_encoder", "tokenizer", "scheduler")


class ModelNotFoundError(RuntimeError):
    """The weights could not be found or loaded; the message says what was tried and what to do."""


@dataclass
class DiffusionModel:
    """The five components on one device and dtype. ``source`` is the folder or hub id they came from."""

    name: str
    source: str
    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    device: torch.device
    dtype: torch.dtype
    folder: Path | None = None  # local folder, when loaded from one

    @property
    def vae_scale_factor(self) -> int:
        """Image pixels per latent pixel (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        """Side in pixels of the images the model was trained on (512 for SD1.5, 128 for shapes-world)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this for every UNet level to divide evenly (64 for SD)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    @property
    def max_tokens(self) -> int:
        return int(min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings))


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else cuda > mps > cpu."""
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """``dtype`` if given ("float16", "bfloat16", "float32"), else float16 on cuda and float32 elsewhere."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype:
        names = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
                 "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}
        if dtype not in names:
            raise ValueError(f"dtype={dtype!r}; expected one of {sorted(names)}")
        return names[dtype]
    return torch.float16 if device.type == "cuda" else torch.float32


def resolve_source(name_or_path: str) -> tuple[str, Path | None]:
    """(source, local folder or None). Registry names and existing folders resolve locally."""
    if name_or_path in REGISTRY:
        folder = REGISTRY[name_or_path]
        if not (folder / "model_index.json").is_file() and not (folder / "unet").is_dir():
            raise ModelNotFoundError(
                f"the shipped model {name_or_path!r} is missing from {folder}; reinstall seediff "
                f"or run tools/train_shapes_world.py to rebuild it"
            )
        return str(folder), folder
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"{path} is a file; pass a folder in the diffusers Stable Diffusion layout")
        missing = [c for c in COMPONENTS if not (path / c).is_dir()]
        if missing:
            raise ModelNotFoundError(
                f"{path} is not a Stable Diffusion folder: missing {', '.join(missing)} "
                f"(expected subfolders {', '.join(COMPONENTS)}, as written by save_pretrained)"
            )
        return str(path.resolve()), path.resolve()
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") != 1:
        raise ModelNotFoundError(
            f"model {name_or_path!r} is neither a shipped model ({', '.join(REGISTRY)}), an existing folder, "
            f"nor a Hugging Face Hub id of the form owner/name"
        )
    return name_or_path, None


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None) -> DiffusionModel:
    """Load (once per process) the model named by a registry name, a local folder or a hub id.

    Args:
        name_or_path (`str`, defaults to SD1.5's hub id): ``"shapes-world"``, a folder holding
            vae/unet/text_encoder/tokenizer/scheduler, or a hub id such as
            ``stable-diffusion-v1-5/stable-diffusion-v1-5``.
        device (`str`, *optional*): torch device; default cuda > mps > cpu.
        dtype (`str`, *optional*): default float16 on cuda, float32 elsewhere.

    Raises:
        ModelNotFoundError: the weights are missing, the hub is unreachable, or the folder is incomplete.
    """
    dev = pick_device(device)
    # One load at a time: lru_cache does not stop two threads from loading the same model twice,
    # and diffusers' lazy imports are not safe when two threads trigger them at once.
    with _LOAD_LOCK:
        return _load_cached(name_or_path, str(dev), pick_dtype(dev, dtype))


_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=4)
def _load_cached(name_or_path: str, device: str, dtype: torch.dtype) -> DiffusionModel:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    source, folder = resolve_source(name_or_path)
    kwargs: dict[str, Any] = {"local_files_only": folder is not None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", **kwargs)
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **kwargs)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=dtype, **kwargs)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype, **kwargs)
        # DDIM shares the noise schedule of whatever scheduler the model ships (PNDM for SD1.5).
        scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler", **kwargs)
    except Exception as exc:  # the hub and file errors differ across versions; report them all alike
        where = f"the local folder {folder}" if folder else f"the Hugging Face Hub id {source!r} (and the local hub cache)"
        raise ModelNotFoundError(
            f"could not load model {name_or_path!r} from {where}: {type(exc).__name__}: {exc}\n"
            f"Without network access, download the model elsewhere (e.g. `huggingface-cli download "
            f"{DEFAULT_MODEL} --local-dir sd15`), copy the folder here and pass --model /path/to/sd15; "
            f"or use --model shapes-world, which ships with seediff."
        ) from exc
    if int(tokenizer.model_max_length) > 10_000:  # a tokenizer saved without a length: CLIP's window
        tokenizer.model_max_length = int(text_encoder.config.max_position_embeddings)
    dev = torch.device(device)
    for module in (vae, unet, text_encoder):
        module.to(dev).eval().requires_grad_(False)
    name = next((n for n, p in REGISTRY.items() if str(p) == source), name_or_path)
    log.info("loaded %s from %s on %s (%s)", name, source, dev, dtype)
    return DiffusionModel(name, source, vae, unet, text_encoder, tokenizer, scheduler, dev, dtype, folder)
