"""From a Label Studio labeling config to what to segment, and from masks to result regions.

One class per control tag: BrushLabels (RLE), PolygonLabels (contours in percent) and
BitmaskLabels (PNG data URL). Controls pointing at the same Image share one segmentation of it.
A ``<Label predicted_values="cat,kitten">`` gives the label's prompt words.
"""

from __future__ import annotations

import base64
import io
import logging
import uuid
from dataclasses import dataclass, field
from typing import ClassVar

import cv2
import numpy as np

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

    def regions(self, label: str, mask: np.ndarray, score: float) -> list[dict]:
        """Result regions for one label's (H, W) uint8 0/255 mask in the original frame."""
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

    def regions(self, label: str, mask: np.ndarray, score: float) -> list[dict]:
        return [self.region({"format": "rle", "rle": mask_to_rle(mask)}, label, score, *mask.shape)]


class PolygonLabelsControl(ControlModel):
    """One polygon per connected part (holes cannot be drawn as polygons), simplified to within
    ~0.15 % of the image's long side; parts smaller than 0.01 % of the image are dropped."""

    tag = "PolygonLabels"
    result_type = "polygonlabels"

    def regions(self, label: str, mask: np.ndarray, score: float) -> list[dict]:
        height, width = mask.shape
        contours, _ = cv2.findContours((mask > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        min_area = max(16.0, 1e-4 * height * width)
        tolerance = max(1.0, 0.0015 * max(height, width))
        out = []
        for contour in contours:
            if cv2.contourArea(contour) < min_area:
                continue
            points = cv2.approxPolyDP(contour, tolerance, True)[:, 0, :].astype(np.float64)
            if len(points) < 3:
                continue
            # Contours run through pixel centres; percentages are of the image's width and height.
            percent = np.stack([(points[:, 0] + 0.5) / width, (points[:, 1] + 0.5) / height], 1) * 100
            value = {"points": np.round(percent, 3).tolist(), "closed": True}
            out.append(self.region(value, label, score, height, width))
        return out


class BitmaskLabelsControl(ControlModel):
    tag = "BitmaskLabels"
    result_type = "bitmasklabels"

    def regions(self, label: str, mask: np.ndarray, score: float) -> list[dict]:
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(mask).save(buffer, format="PNG", optimize=True)
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        return [self.region({"imageDataURL": url}, label, score, *mask.shape)]


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


def parse_targets(label_interface) -> list[ImageTarget]:
    """The Image objects seediff can label, with their controls.

    Raises:
        RequestError (a ValueError): no BrushLabels, PolygonLabels or BitmaskLabels control points at an Image.
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
    if not targets:
        raise RequestError(
            "label_config", "has no BrushLabels, PolygonLabels or BitmaskLabels control on an Image",
            'add one, e.g. <Image name="image" value="$image"/> <BrushLabels name="tag" toName="image">'
            '<Label value="cat"/></BrushLabels>'
        )
    return list(targets.values())
