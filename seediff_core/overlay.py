"""Drawing masks over the photo, with a legend, for people to look at."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Distinct colours (Tableau 10), RGB.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def colour_for(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def draw_overlay(image: np.ndarray, masks: Sequence[np.ndarray], names: Sequence[str], alpha: float = 0.45) -> np.ndarray:
    """Masks blended over ``image`` with outlines and a legend.

    Args:
        image (`np.ndarray`): (H, W, 3) uint8 RGB.
        masks: (H, W) uint8/bool masks in the same frame.
        names: legend text per mask (e.g. "cat 0.83").

    Returns:
        (H, W, 3) uint8 RGB.
    """
    out = image.astype(np.float32).copy()
    height, width = image.shape[:2]
    thickness = max(1, round(max(height, width) / 400))
    for i, mask in enumerate(masks):
        inside = np.asarray(mask) > 0
        out[inside] = (1 - alpha) * out[inside] + alpha * np.array(colour_for(i), dtype=np.float32)
    out = out.clip(0, 255).astype(np.uint8)
    for i, mask in enumerate(masks):
        contours, _ = cv2.findContours((np.asarray(mask) > 0).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, colour_for(i), thickness, lineType=cv2.LINE_AA)
    return _legend(out, names)


def _legend(image: np.ndarray, names: Sequence[str]) -> np.ndarray:
    if not names:
        return image
    height, width = image.shape[:2]
    scale = max(0.35, min(1.2, max(height, width) / 900))
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, max(1, round(scale * 1.5))
    line = int(28 * scale) + 4
    sizes = [cv2.getTextSize(n, font, scale, thick)[0] for n in names]
    box_w = min(width, max(w for w, _ in sizes) + line + 12)
    box_h = min(height, line * len(names) + 8)
    panel = image[:box_h, :box_w].astype(np.float32)
    image[:box_h, :box_w] = (0.35 * panel).astype(np.uint8)  # darken behind the text
    for i, name in enumerate(names):
        y = 4 + i * line
        swatch = line - 8
        cv2.rectangle(image, (6, y + 2), (6 + swatch, y + 2 + swatch), colour_for(i), -1)
        cv2.putText(image, name, (12 + swatch, y + swatch), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return image


def draw_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5, caption: str | None = None) -> np.ndarray:
    """A heat map (H, W) float in [0, 1] in the inferno colour map over an (H, W, 3) uint8 RGB image."""
    coloured = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_INFERNO)[..., ::-1]
    out = ((1 - alpha) * image.astype(np.float32) + alpha * coloured.astype(np.float32)).clip(0, 255).astype(np.uint8)
    return _legend(out, [caption]) if caption else out
