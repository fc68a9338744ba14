"""From a Label Studio labeling config to what to segment, and from masks to result regions.

One class per control tag: BrushLabels (RLE), PolygonLabels (outlines in percent) and
BitmaskLabels (PNG data URL); each object of a label's mask (``Region``) is one result region with
its own score. Controls pointing at the same Image share one segmentation of it.
A ``<Label predicted_values="cat,kitten">`` gives the label's prompt words.
"""

from __future__ import annotations

import base64
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from seediff_core.results import Region

from .errors import RequestError
from .rle import mask_to_rle

log = logging.getLogger(__name__)


@dataclass
class ControlModel:
    """A control tag that seediff fills: its name, the Image it labels, its labels and their words."""

    name: str
    to_name: str
    labels: list[str]
    words: dict[str, list[str]] = field(default_factory=dict)
    tag: ClassVar[str] = ""
    result_type: ClassVar[str] = ""

    def regions(self, label: str, regions: list[Region], height: int, width: int) -> list[dict]:
        """Result regions, one per object of one label, each with its own score; ``height`` and
        ``width`` are the original image's."""
        return [self.region(value, label, region.score, height, width)
                for region in regions for value in self.values(region, height, width)]

    def values(self, region: Region, height: int, width: int) -> list[dict]:
        """The ``value`` dicts (without the label) that draw one region in this tag's format."""
        raise NotImplementedError

    def region(self, value: dict, label: str, score: float, height: int, width: int) -> dict:
        """The result dict every region shares; ``value`` gets the label under this tag's key."""
        return {
            "id": uuid.uuid4().hex[:10],
            "from_name": self.name,
            "to_name": self.to_name,
            "type": self.result_type,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "value": {**value, self.result_type: [label]},
            "score": round(float(score), 4),
            "readonly": False,
        }


class BrushLabelsControl(ControlModel):
    tag = "BrushLabels"
    result_type = "brushlabels"

    def values(self, region: Region, height: int, width: int) -> list[dict]:
        return [{"format": "rle", "rle": mask_to_rle(region.full_mask(height, width))}]


class PolygonLabelsControl(ControlModel):
    """The region's smooth outline (``Region.outline``), in percent of the image; Label Studio's
    polygons have no holes, so a region with holes is drawn by its outer boundary."""

    tag = "PolygonLabels"
    result_type = "polygonlabels"

    def values(self, region: Region, height: int, width: int) -> list[dict]:
        return [{"points": np.round(polygon / [width, height] * 100, 3).tolist(), "closed": True}
                for polygon in region.outline]


class BitmaskLabelsControl(ControlModel):
    tag = "BitmaskLabels"
    result_type = "bitmasklabels"

    def values(self, region: Region, height: int, width: int) -> list[dict]:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(region.full_mask(height, width)).save(buffer, format="PNG", optimize=True)
        return [{"imageDataURL": "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()}]


CONTROLS = {cls.tag: cls for cls in (BrushLabelsControl, PolygonLabelsControl, BitmaskLabelsControl)}


@dataclass
class ImageTarget:
    """An Image object of the config, the task data key holding its URL, and the controls on it."""

    object_name: str
    data_key: str
    controls: list[ControlModel]

    @property
    def labels(self) -> list[str]:
        seen: list[str] = []
        for control in self.controls:
            seen.extend(label for label in control.labels if label not in seen)
        return seen

    @property
    def words(self) -> dict[str, list[str]]:
        merged: dict[str, list[str]] = {}
        for control in self.controls:
            for label, words in control.words.items():
                merged.setdefault(label, words)
        return merged


def parse_targets(label_interface, required: bool = True) -> list[ImageTarget]:
    """The Image objects seediff can label, with their controls.

    Raises:
        RequestError (a ValueError): no BrushLabels, PolygonLabels or BitmaskLabels control points
            at an Image (with ``required=False``: an empty list).
    """
    targets: dict[str, ImageTarget] = {}
    for control in label_interface.controls:
        cls = CONTROLS.get(control.tag)
        if cls is None:
            continue
        for to_name in control.to_name:
            try:
                obj = label_interface.get_object(to_name)
            except Exception:  # the SDK raises a bare Exception for an unknown name
                obj = None
            if obj is None or obj.tag != "Image":
                log.info("control %r labels %r, which is not an Image: ignored", control.name, to_name)
                continue
            value = str(obj.value)
            if not value.startswith("$"):
                log.info("Image %r has a fixed value %r, not a task field: ignored", to_name, value)
                continue
            words = {}
            for label, tag in control.labels_attrs.items():
                given = (tag.attr or {}).get("predicted_values")
                if given:
                    words[label] = [w.strip() for w in given.split(",") if w.strip()]
            target = targets.setdefault(to_name, ImageTarget(to_name, value[1:], []))
            target.controls.append(cls(control.name, to_name, list(control.labels), words))
    if not targets and required:
        raise RequestError(
            "label_config", "has no BrushLabels, PolygonLabels or BitmaskLabels control on an Image",
            'add one, e.g. <Image name="image" value="$image"/> <BrushLabels name="tag" toName="image">'
            '<Label value="cat"/></BrushLabels>'
        )
    return list(targets.values())
