"""What a segmentation method is: a strategy over one image's ``AttentionMaps``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from ..attention import Layer
from ..config import SeediffConfig
from ..maps import AttentionMaps


@dataclass
class MethodOutput:
    """A method's answer on the working image's grid (h, w), padding included.

    Attributes:
        soft (`torch.Tensor`): (K, h, w) float in [0, 1], each label's confidence map.
        masks (`torch.Tensor`): (K, h, w) bool, disjoint (background where no label holds).
        scores (`torch.Tensor`): (K,) float in [0, 1]; the method's docstring says what they mean.
        score (`Callable`): scores any (K, h, w) bool masks on the masks' grid the way ``scores``
            were computed, (K,) float; the pipeline scores each region alone with it, and the labels
            again once fragments are gone.
    """

    soft: torch.Tensor
    masks: torch.Tensor
    score: Callable[[torch.Tensor], torch.Tensor]

    @property
    def scores(self) -> torch.Tensor:
        return self.score(self.masks)


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
