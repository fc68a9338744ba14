"""What a segmentation method is: a strategy over one image's ``AttentionMaps``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from ..attention import Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps


@dataclass
class MethodOutput:
    """A method's answer on the working grid (or a grid proportional to it).

    Attributes:
        soft (`torch.Tensor`): (K, h, w) float in [0, 1], each label's confidence map.
        masks (`torch.Tensor`): (K, h, w) bool, disjoint (background where no label holds).
        scores (`torch.Tensor`): (K,) float in [0, 1]; the method's docstring says what they mean.
    """

    soft: torch.Tensor
    masks: torch.Tensor
    scores: torch.Tensor


class Method(Protocol):
    """A method names the attention layers it reads and turns their maps into masks."""

    name: ClassVar[str]
    # The method's own settings (its paper's), applied under the model's tuned ones and the caller's.
    defaults: ClassVar[dict] = {}

    def layers(self, available: list[Layer], config: SeediffConfig) -> set[str]:
        """Names of the layers to capture, chosen from ``available`` (execution order)."""
        ...

    def segment(self, maps: AttentionMaps, config: SeediffConfig) -> MethodOutput:
        """K masks for the K labels of ``maps`` (its ``extras`` excluded)."""
        ...

    # Optional: def prompt_extras(self, config) -> list[str], words added to the prompt without a mask.
