"""Segmentation methods: interchangeable strategies over one image's attention maps."""

from __future__ import annotations

from .base import Method, MethodOutput
from .crossattn import CrossAttentionBaseline
from .diffseg import DiffSeg
from .diffumask import DiffuMask
from .seediff import SeeDiff
from .t2m import T2M

METHODS: dict[str, type] = {cls.name: cls for cls in (SeeDiff, DiffSeg, DiffuMask, T2M, CrossAttentionBaseline)}


def method_defaults() -> dict[str, dict]:
    """Each method's own default settings, by name."""
    return {name: dict(getattr(cls, "defaults", {})) for name, cls in METHODS.items()}


def get_method(name: str) -> Method:
    """The method registered as ``name``; ValueError lists the available ones."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]()


__all__ = ["METHODS", "Method", "MethodOutput", "get_method", "method_defaults"]
