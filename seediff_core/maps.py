"""The attention of one image, per label, in the form every method reads.

Captured stores hold raw (B, queries, keys) running sums per layer; ``collect_maps`` turns them into
per-label cross-attention maps on their grids and square self-attention matrices, keyed by grid
factor (1 = the latent grid). Methods never touch the UNet or the prompt again.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import CROSS, SELF, AttentionStore
from .hints import Hints
from .prompts import Prompt


@dataclass
class AttentionMaps:
    """Attention of one image (batch row 0 of the stores).

    Attributes:
        labels (`list[str]`): in the order of every K axis below.
        latent_size (`tuple[int, int]`): (h, w) of the latent grid.
        content (`tuple[float, float, float, float]`): (x0, y0, x1, y1), the image inside the padded
            grid as fractions of the grid's width and height.
        image (`torch.Tensor`): (3, H, W) float in [0, 1], the working image (for refinement), on
            the device of the attention below.
        cross (`dict[int, torch.Tensor]`): factor -> (layers, K, h, w) mean over each label's tokens
            and over timesteps; un-normalised attention probabilities.
        cross_layers (`dict[int, list[str]]`): factor -> layer names in execution order.
        self_attention (`dict[int, torch.Tensor]`): factor -> (layers, h*w, h*w), rows sum to 1.
        self_layers (`dict[int, list[str]]`): factor -> layer names in execution order.
        hints (`dict[str, Hints]`): annotator hints per label, in fractions of the working grid.
        extras (`list[str]`): words the method added to the prompt (e.g. T2M's background words);
            they are the last entries of ``labels`` and get no mask.
    """

    labels: list[str]
    latent_size: tuple[int, int]
    content: tuple[float, float, float, float]
    image: torch.Tensor
    cross: dict[int, torch.Tensor]
    cross_layers: dict[int, list[str]]
    self_attention: dict[int, torch.Tensor]
    self_layers: dict[int, list[str]]
    hints: dict[str, Hints] = field(default_factory=dict)
    extras: list[str] = field(default_factory=list)

    @property
    def device(self) -> torch.device:
        """Where the maps live (the UNet's device); every method computes there."""
        return self.image.device

    def grid(self, factor: int) -> tuple[int, int]:
        """(h, w) of the maps at ``factor``."""
        return self.latent_size[0] // factor, self.latent_size[1] // factor

    def valid(self, size: tuple[int, int]) -> torch.Tensor:
        """(h, w) bool: grid cells whose centre lies on the image rather than its padding."""
        h, w = size
        x0, y0, x1, y1 = self.content
        ys = (torch.arange(h, dtype=torch.float32, device=self.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=self.device) + 0.5) / w
        return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]

    def require_cross(self, factor: int) -> torch.Tensor:
        if factor not in self.cross:
            raise ValueError(
                f"no cross-attention at factor {factor} (grid {self.grid(factor)}); this model has it at "
                f"factors {sorted(self.cross)}. Set seed_factor to one of those."
            )
        return self.cross[factor]

    def require_self(self, factor: int) -> torch.Tensor:
        if factor not in self.self_attention:
            raise ValueError(
                f"no self-attention at factor {factor} (grid {self.grid(factor)}); captured factors: "
                f"{sorted(self.self_attention)}. Set expansion_factors to factors this model has."
            )
        return self.self_attention[factor]


def collect_maps(
    stores: list[AttentionStore],
    prompts: list[Prompt],
    labels: list[str],
    latent_size: tuple[int, int],
    content: tuple[float, float, float, float],
    image: torch.Tensor,
    row: int = 0,
) -> AttentionMaps:
    """Per-label maps of batch row ``row`` from one store per prompt pass. Self-attention is averaged
    over the passes that captured it (the latents are the same; only the text differs)."""
    cross: dict[int, torch.Tensor] = {}
    cross_layers: dict[int, list[str]] = {}
    per_label: dict[str, dict[int, list[torch.Tensor]]] = {}
    for store, prompt in zip(stores, prompts):
        for name in store.names(kind=CROSS):
            layer = store.layers[name]
            h, w = store.grid.get(name, (latent_size[0] // layer.factor, latent_size[1] // layer.factor))
            probs = store.mean(name)[row]  # (queries, keys)
            for label, tokens in prompt.tokens.items():
                token_map = probs[:, list(tokens)].mean(dim=1).reshape(h, w)
                per_label.setdefault(label, {}).setdefault(layer.factor, []).append(token_map)
            if prompt is prompts[0]:
                cross_layers.setdefault(layer.factor, []).append(name)
    for factor in cross_layers:
        cross[factor] = torch.stack([torch.stack(per_label[label][factor]) for label in labels], dim=1)

    self_maps: dict[int, torch.Tensor] = {}
    self_layers: dict[int, list[str]] = {}
    for store in stores:
        for name in store.names(kind=SELF):
            factor = store.layers[name].factor
            self_layers.setdefault(factor, [])
            if name not in self_layers[factor]:
                self_layers[factor].append(name)
    for factor, names in self_layers.items():
        stacked = []
        for name in names:
            found = [store.mean(name)[row] for store in stores if name in store.sums]
            stacked.append(torch.stack(found).mean(dim=0))
        self_maps[factor] = torch.stack(stacked)
    return AttentionMaps(
        labels=list(labels),
        latent_size=latent_size,
        content=content,
        image=image,
        cross=cross,
        cross_layers=cross_layers,
        self_attention=self_maps,
        self_layers=self_layers,
    )
