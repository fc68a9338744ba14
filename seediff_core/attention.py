"""Capturing attention probabilities from a diffusers UNet.

``capture_attention(unet, store, select)`` installs a capturing processor on the layers that
``select`` picks (by name, kind and grid factor) and leaves every other layer on its own
processor (SDPA). The capturing processor computes the same output as diffusers'
``AttnProcessor2_0``, but materialises softmax(QK^T) in fp32, chunk by chunk over queries, and adds
its head mean into an fp32 running sum per layer. On exit, even after an exception, the original
processors are restored.

Layer grid factors come from the UNet config (down block i works at factor 2**i, the mid block at
the deepest factor, up block i mirrors down block n-1-i) and are checked against the shapes seen.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

SELF, CROSS = "self", "cross"
_NAME = re.compile(r"^(down_blocks|up_blocks|mid_block)\.?(\d*)\.attentions\.(\d+)\.transformer_blocks\.(\d+)\.(attn1|attn2)$")


@dataclass(frozen=True)
class Layer:
    """An attention layer of the UNet: its module name, kind (self/cross), grid factor and position
    in execution order (down blocks, mid block, up blocks)."""

    name: str
    kind: str
    factor: int
    block: str  # "down", "mid" or "up"
    order: int


def unet_layers(unet) -> list[Layer]:
    """Every attention layer of ``unet`` in execution order."""
    levels = len(unet.config.block_out_channels)
    found = []
    for name, module in unet.named_modules():
        match = _NAME.match(name)
        if match is None or not hasattr(module, "processor"):
            continue
        group, index, attention, transformer, attn = match.groups()
        index = int(index or 0)
        if group == "down_blocks":
            factor, block, rank = 2**index, "down", (0, index)
        elif group == "mid_block":
            factor, block, rank = 2 ** (levels - 1), "mid", (1, 0)
        else:
            factor, block, rank = 2 ** (levels - 1 - index), "up", (2, index)
        found.append((rank + (int(attention), int(transformer), attn), name, SELF if attn == "attn1" else CROSS, factor, block))
    found.sort()
    return [Layer(name, kind, factor, block, i) for i, (_, name, kind, factor, block) in enumerate(found)]


Selector = Callable[[Layer], bool]


@dataclass
class AttentionStore:
    """Running sums of head-mean attention probabilities per captured layer.

    ``keep`` picks the batch rows to record: with classifier-free guidance the batch is
    [unconditional, conditional] and ``keep=slice(n, None)`` records the conditional half. The
    default records every row.
    """

    keep: slice = field(default_factory=lambda: slice(None))
    enabled: bool = True
    sums: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, Lq, Lk) float32
    calls: dict[str, int] = field(default_factory=dict)
    layers: dict[str, Layer] = field(default_factory=dict)
    grid: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (h, w) of the query grid

    def mean(self, name: str) -> torch.Tensor:
        """(B, Lq, Lk) mean over the calls of layer ``name``; rows sum to 1."""
        if name not in self.sums:
            raise KeyError(f"layer {name!r} was not captured; captured: {sorted(self.sums)}")
        return self.sums[name] / self.calls[name]

    def names(self, kind: str | None = None, factor: int | None = None, block: str | None = None) -> list[str]:
        """Captured layer names in execution order, filtered."""
        picked = [
            layer for name, layer in self.layers.items()
            if name in self.sums and (kind is None or layer.kind == kind)
            and (factor is None or layer.factor == factor) and (block is None or layer.block == block)
        ]
        return [layer.name for layer in sorted(picked, key=lambda layer: layer.order)]

    def clear(self) -> None:
        self.sums.clear()
        self.calls.clear()

    def _add(self, layer: Layer, start: int, probs: torch.Tensor, total_queries: int) -> None:
        """Add (B, chunk, Lk) head-mean probabilities for queries start..start+chunk."""
        probs = probs[self.keep]
        if layer.name not in self.sums:
            self.sums[layer.name] = torch.zeros(
                probs.shape[0], total_queries, probs.shape[-1], dtype=torch.float32, device=probs.device
            )
            self.calls[layer.name] = 0
        self.sums[layer.name][:, start : start + probs.shape[1]] += probs
        if start + probs.shape[1] == total_queries:
            self.calls[layer.name] += 1


class CaptureProcessor:
    """Computes what ``AttnProcessor2_0`` computes and records the attention probabilities.

    The output math (spatial/group norm, cross norm, q/k norms, residual, rescale, 4-D inputs) follows
    diffusers' stock processor, so the UNet's output does not change with capture (checked in tests).
    """

    def __init__(self, store: AttentionStore, layer: Layer, latent_hw: Callable[[], tuple[int, int] | None], chunk: int):
        self.store, self.layer, self.latent_hw, self.chunk = store, layer, latent_hw, chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, key_length, _ = hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        queries = query.shape[2]
        self._record_grid(queries)
        # SDPA's default scale is head_dim ** -0.5, which is also attn.scale in SD UNets.
        scale = head_dim**-0.5
        key_t = key.float().transpose(-1, -2)
        out = torch.empty_like(query)
        for start in range(0, queries, self.chunk):
            stop = min(start + self.chunk, queries)
            scores = (query[:, :, start:stop].float() @ key_t) * scale
            if attention_mask is not None:
                scores = scores + attention_mask[:, :, start:stop].float()
            probs = scores.softmax(dim=-1)
            out[:, :, start:stop] = (probs.to(value.dtype) @ value).to(out.dtype)
            if self.store.enabled:
                self.store._add(self.layer, start, probs.mean(dim=1), queries)
            del scores, probs

        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _record_grid(self, queries: int) -> None:
        latent = self.latent_hw()
        if latent is None:
            return
        h, w = latent[0] // self.layer.factor, latent[1] // self.layer.factor
        if h * w != queries:
            raise RuntimeError(
                f"layer {self.layer.name} saw {queries} queries, expected {h}x{w} for factor {self.layer.factor} "
                f"of a {latent[0]}x{latent[1]} latent; is the latent size a multiple of the model's multiple?"
            )
        self.store.grid[self.layer.name] = (h, w)


@contextlib.contextmanager
def capture_attention(
    unet, store: AttentionStore, select: Selector, chunk: int = 1024
) -> Iterator[AttentionStore]:
    """Capture the layers ``select`` picks into ``store`` while the context is open.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        store (`AttentionStore`): receives the running sums; may be reused across contexts.
        select (`Callable[[Layer], bool]`): which layers to capture.
        chunk (`int`): queries per softmax chunk; bounds the transient memory to
            batch x heads x chunk x keys x 4 bytes.

    Raises:
        RuntimeError: the UNet is already being captured, or ``select`` picks no layer.
    """
    if getattr(unet, "_seediff_capturing", False):
        raise RuntimeError("this UNet is already inside capture_attention(); close that context first")
    layers = [layer for layer in unet_layers(unet) if select(layer)]
    if not layers:
        raise RuntimeError("the layer selection picked no attention layer of this UNet")
    modules = dict(unet.named_modules())
    originals = {layer.name: modules[layer.name].processor for layer in layers}
    latent_hw: list[tuple[int, int] | None] = [None]

    def remember_latent(_module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        latent_hw[0] = tuple(sample.shape[-2:])

    hook = unet.register_forward_pre_hook(remember_latent, with_kwargs=True)
    unet._seediff_capturing = True
    try:
        for layer in layers:
            store.layers[layer.name] = layer
            modules[layer.name].set_processor(CaptureProcessor(store, layer, lambda: latent_hw[0], chunk))
        yield store
    finally:
        for name, processor in originals.items():
            modules[name].set_processor(processor)
        hook.remove()
        unet._seediff_capturing = False
