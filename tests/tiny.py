"""Tiny randomly initialised Stable Diffusion pipelines, built from configs with no network."""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = ["a", "photo", "of", "and", ",", "cat", "dog", "bird", "kitten", "sky", "person", "tree", "car"]


def build_tiny_sd(folder: Path, *, sd2: bool = False, seed: int = 0) -> Path:
    """Write a tiny SD-layout model to ``folder`` and return it.

    The UNet has SD1.5's topology (three cross-attention down blocks, a plain one, the mirror up
    blocks and a cross-attention mid block), so its 32 attention layer names are SD1.5's. With
    ``sd2``: linear projections, heads sized like SD2 (one head per 8 channels here), v-prediction
    and a different text width, as in SD 2.x.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from seediff_core.building import write_word_tokenizer

    torch.manual_seed(seed)
    text_dim = 48 if sd2 else 32
    write_word_tokenizer(folder / "_tok", WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder / "_tok"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    ))
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(32, 32, 64, 64), layers_per_block=2,
        attention_head_dim=(4, 4, 8, 8) if sd2 else 2, use_linear_projection=sd2,
        cross_attention_dim=text_dim, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 16, 16, 16),
        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=128,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        prediction_type="v_prediction" if sd2 else "epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    return folder
