"""Shapes world: procedural scenes whose every pixel's label is known.

A scene is a geometric description (objects with shape, colour, centre, size and rotation, plus a
background) that can be rendered at any size, so the same scene serves training at 128x128 and
evaluation at 256x256 with exact masks at both. Everything is a pure function of the seed.

The world, exactly:
- 1-3 objects; shape uniform over circle, square, triangle, star; colour uniform over red, green,
  blue, yellow (hue +-8 degrees, saturation and value 0.75-1.0); radius 0.13-0.27 of the image side
  (shrinking when a crowded scene fails to place an object), rotation uniform; objects keep a gap of
  0.03 unless the scene (one in five) allows overlap; later objects occlude earlier ones.
- Touching scenes (``touching=True``, a separate draw from the same seeds): 2-3 objects, each after
  the first placed against an earlier one in a random direction, either touching it (outlines
  brought together, then 0.006 of the side deeper, so they share an edge) or partly in front of it (moved in by 15-55 % of the smaller
  radius), never hiding more than half of any earlier object. Objects touch in nearly every photo;
  these scenes are where telling touching objects apart is needed. The default draw is unchanged
  by the option, so the existing splits stay as they were.
- Patterned scenes (the default, ``patterned=True``): every shape class carries a pattern of its own
  inside its outline, drawn in the object's colour at 60 % of its brightness, with a period of
  ``PATTERN_PERIOD`` = 0.1 of the image side (12.8 px at 128, coarse enough for the x8 VAE), in the
  object's own rotated frame with a random phase: circle = dots on a square lattice (radius 0.3
  period), square = stripes (half a period each), triangle = checks (half-period cells), star =
  rings around its centre (half a period each). The pattern is detail that only the shape word
  tells, which is what makes a text-to-image model look up the shape word at each place.
  Flat scenes (``patterned=False``) fill each outline with the plain colour; they are the harder,
  second split.
- Backgrounds: plain, gradient or textured (coarse blotches plus grain), in muted colours
  (saturation 0-0.25, value 0.3-0.75).

Seed ranges are split so that evaluation never sees a training scene:
``TRAIN_SEEDS`` for training, ``TUNE_SEEDS`` for tuning defaults, ``TEST_SEEDS`` for reported numbers.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow")
BACKGROUND_KINDS = ("plain", "gradient", "textured")

TRAIN_SEEDS = range(0, 10_000_000)
TUNE_SEEDS = range(10_000_000, 11_000_000)
TEST_SEEDS = range(20_000_000, 21_000_000)

# Hue (degrees) of each colour name; saturation/value are jittered per object.
_HUES = {"red": 0.0, "green": 120.0, "blue": 225.0, "yellow": 55.0}
_SUPERSAMPLE = 4
PATTERNS = {"circle": "dots", "square": "stripes", "triangle": "checks", "star": "rings"}
PATTERN_PERIOD = 0.1  # of the image side
_PATTERN_SHADE = 0.6


@dataclass(frozen=True)
class SceneObject:
    """One object. ``center`` and ``radius`` are fractions of the image side; ``rgb`` in 0..255."""

    shape: str
    colour: str
    center: tuple[float, float]  # (x, y)
    radius: float
    rotation: float  # radians
    rgb: tuple[int, int, int]
    pattern_phase: tuple[float, float] = (0.0, 0.0)  # fractions of a period, in the object's frame

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    seed: int
    objects: tuple[SceneObject, ...]  # drawn in order: later objects occlude earlier ones
    background: str
    background_rgb: tuple[tuple[int, int, int], tuple[int, int, int]]
    gradient_angle: float = 0.0
    patterned: bool = True

    def caption(self, rng: np.random.Generator | None = None) -> str:
        """A caption; with ``rng`` one of the training variants, without it the canonical one."""
        return caption_for(self, rng)


@dataclass
class RenderedScene:
    """``image``: (H, W, 3) uint8 RGB. ``masks``: one (H, W) bool per object (visible part)."""

    scene: Scene
    image: np.ndarray
    masks: list[np.ndarray] = field(default_factory=list)

    def label_mask(self, label: str) -> np.ndarray:
        """Union of the visible masks of objects matching ``label`` ("circle" or "red circle")."""
        out = np.zeros(self.image.shape[:2], dtype=bool)
        for obj, mask in zip(self.scene.objects, self.masks):
            if label in (obj.shape, obj.name):
                out |= mask
        return out


def make_scene(seed: int, min_objects: int = 1, max_objects: int = 3, patterned: bool = True,
               touching: bool = False) -> Scene:
    """Sample a scene. Objects are mostly apart; about one scene in five lets them overlap; with
    ``touching`` every object touches or partly covers an earlier one (at least two objects). The
    same seed gives the same objects patterned or flat (the pattern phases are drawn last)."""
    if touching:
        return _touching_scene(seed, max(2, min_objects), max(2, max_objects), patterned)
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_objects, max_objects + 1))
    allow_overlap = rng.random() < 0.2
    objects: list[SceneObject] = []
    for _ in range(n):
        for attempt in range(50):
            # Shrink the size range as attempts fail so that crowded scenes still place everything.
            shrink = 1.0 - attempt / 80
            radius = float(rng.uniform(0.13, 0.27) * shrink)
            center = (float(rng.uniform(radius, 1 - radius)), float(rng.uniform(radius, 1 - radius)))
            if allow_overlap or all(_apart(center, radius, o) for o in objects):
                break
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        colour = COLOURS[int(rng.integers(len(COLOURS)))]
        objects.append(
            SceneObject(shape, colour, center, radius, float(rng.uniform(0, 2 * math.pi)), _object_rgb(colour, rng))
        )
    return _finish_scene(seed, objects, rng, patterned)


def _finish_scene(seed: int, objects: list[SceneObject], rng: np.random.Generator, patterned: bool) -> Scene:
    """Background and pattern phases, drawn after the objects."""
    kind = BACKGROUND_KINDS[int(rng.integers(len(BACKGROUND_KINDS)))]
    bg = (_muted_rgb(rng), _muted_rgb(rng))
    angle = float(rng.uniform(0, 2 * math.pi))
    if patterned:
        objects = [replace(o, pattern_phase=(float(rng.random()), float(rng.random()))) for o in objects]
    return Scene(seed, tuple(objects), kind, bg, angle, patterned)


# Touching scenes: a separate stream of the seed, so the default draw of every seed is untouched.
_TOUCHING_STREAM = 0x70C4
_CONTACT_CANVAS = 512  # outlines are brought together at this resolution (4x supersampled 128 px)
_CONTACT_DEPTH = 0.006  # of the side: 1.5 px at 256


def _touching_scene(seed: int, min_objects: int, max_objects: int, patterned: bool) -> Scene:
    rng = np.random.default_rng([seed, _TOUCHING_STREAM])
    n = int(rng.integers(min_objects, max_objects + 1))
    objects: list[SceneObject] = []
    for index in range(n):
        for attempt in range(60):
            shrink = 1.0 - attempt / 100
            radius = float(rng.uniform(0.13, 0.27) * shrink)
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOURS[int(rng.integers(len(COLOURS)))]
            rotation = float(rng.uniform(0, 2 * math.pi))
            rgb = _object_rgb(colour, rng)
            if index == 0:
                # Off-centre enough that the others have room around it.
                center = (float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)))
                objects.append(SceneObject(shape, colour, center, radius, rotation, rgb))
                break
            anchor = objects[int(rng.integers(len(objects)))]
            direction = float(rng.uniform(0, 2 * math.pi))
            overlap = 0.0 if rng.random() < 0.5 else float(rng.uniform(0.15, 0.55))
            candidate = _placed_against(SceneObject(shape, colour, (0.0, 0.0), radius, rotation, rgb), anchor, direction)
            if candidate is None:
                continue
            # Touching: in by _CONTACT_DEPTH, so that tips meeting edges still share pixels at 256 px.
            pull = overlap * min(radius, anchor.radius) + _CONTACT_DEPTH
            candidate = replace(candidate, center=(candidate.center[0] - pull * math.cos(direction),
                                                   candidate.center[1] - pull * math.sin(direction)))
            if _fits(candidate, objects):
                objects.append(candidate)
                break
    return _finish_scene(seed, objects, rng, patterned)


def _object_raster(obj: SceneObject, size: int = _CONTACT_CANVAS) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    cv2.fillPoly(canvas, [np.round(_polygon(obj, size) * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return canvas.astype(bool)


def _placed_against(obj: SceneObject, anchor: SceneObject, direction: float) -> SceneObject | None:
    """``obj`` moved along ``direction`` from ``anchor``'s centre to where their outlines just meet
    (bisection on the centre distance), or None if it would leave the image."""
    anchor_raster = _object_raster(anchor)
    step = (math.cos(direction), math.sin(direction))

    def at(distance: float) -> SceneObject:
        return replace(obj, center=(anchor.center[0] + distance * step[0], anchor.center[1] + distance * step[1]))

    near, far = 0.0, 1.2 * (obj.radius + anchor.radius)  # radii scale outlines by at most 1.15
    for _ in range(12):
        middle = (near + far) / 2
        if (_object_raster(at(middle)) & anchor_raster).any():
            near = middle
        else:
            far = middle
    placed = at(near)
    x, y = placed.center
    if not (placed.radius <= x <= 1 - placed.radius and placed.radius <= y <= 1 - placed.radius):
        return None
    return placed


def _fits(candidate: SceneObject, objects: list[SceneObject]) -> bool:
    """Inside the image and hiding at most half of any earlier object's visible area."""
    x, y = candidate.center
    if not (candidate.radius <= x <= 1 - candidate.radius and candidate.radius <= y <= 1 - candidate.radius):
        return False
    cover = _object_raster(candidate)
    owners = [_object_raster(o) for o in objects]
    for index, raster in enumerate(owners):
        own = raster & ~np.any(owners[index + 1 :], axis=0) if index + 1 < len(owners) else raster
        if own.any() and (own & cover).sum() > 0.5 * own.sum():
            return False
    return True


def render(scene: Scene, size: int = 128) -> RenderedScene:
    """Draw ``scene`` at ``size`` x ``size``. Edges are anti-aliased by supersampling; a mask pixel
    belongs to an object when more than half of it is covered by that object's visible part."""
    big = size * _SUPERSAMPLE
    canvas = _background(scene, big)
    owner = np.full((big, big), -1, dtype=np.int16)
    for index, obj in enumerate(scene.objects):
        poly = np.round(_polygon(obj, big) * 16).astype(np.int32)  # 4 fractional bits for cv2
        if scene.patterned:
            inside = np.zeros((big, big), dtype=np.uint8)
            cv2.fillPoly(inside, [poly], 1, lineType=cv2.LINE_8, shift=4)
            # Only the object's bounding box: the same pixels as the whole canvas, several times faster.
            x, y, w, h = cv2.boundingRect(inside)
            window = (slice(y, y + h), slice(x, x + w))
            fill = np.where(_pattern(obj, big, window)[..., None], np.array(obj.rgb) * _PATTERN_SHADE, np.array(obj.rgb))
            canvas[window] = np.where(inside[window][..., None] > 0, fill, canvas[window]).astype(np.uint8)
        else:
            cv2.fillPoly(canvas, [poly], obj.rgb, lineType=cv2.LINE_8, shift=4)
        cv2.fillPoly(owner, [poly], index, lineType=cv2.LINE_8, shift=4)
    image = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    masks = []
    for index in range(len(scene.objects)):
        coverage = cv2.resize((owner == index).astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
        masks.append(coverage > 0.5)
    return RenderedScene(scene, image, masks)


def caption_for(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """Captions name every object. Training variants shuffle the order, mostly drop colours so that
    shape words must carry shape on their own (all coloured 20 %, none 50 %, each object alone at
    even odds 30 %), and sometimes add a prefix or the background."""
    if rng is None:
        return "a " + _join([o.name for o in scene.objects])
    order = rng.permutation(len(scene.objects))
    colour_mode = rng.random()
    phrases = []
    for i in order:
        obj = scene.objects[i]
        coloured = colour_mode < 0.2 or (colour_mode >= 0.7 and rng.random() < 0.5)
        phrases.append(obj.name if coloured else obj.shape)
    text = "a " + _join(phrases)
    if rng.random() < 0.3:
        text = "a photo of " + text
    if rng.random() < 0.25:
        text += f" on a {scene.background} background"
    return text


def caption_words() -> list[str]:
    """Every word a caption or the default prompt template can contain."""
    return ["a", "photo", "of", "and", ",", "on", "background", *SHAPES, *COLOURS, *BACKGROUND_KINDS]


def _join(phrases: list[str]) -> str:
    phrases = [p if i == 0 else "a " + p for i, p in enumerate(phrases)]
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _apart(center: tuple[float, float], radius: float, other: SceneObject) -> bool:
    gap = 0.03
    return math.dist(center, other.center) > radius + other.radius + gap


def _object_rgb(colour: str, rng: np.random.Generator) -> tuple[int, int, int]:
    hue = (_HUES[colour] + rng.uniform(-8, 8)) % 360 / 360
    r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _muted_rgb(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.0, 0.25), rng.uniform(0.3, 0.75))
    return int(r * 255), int(g * 255), int(b * 255)


def _background(scene: Scene, size: int) -> np.ndarray:
    a = np.array(scene.background_rgb[0], dtype=np.float32)
    b = np.array(scene.background_rgb[1], dtype=np.float32)
    if scene.background == "plain":
        img = np.broadcast_to(a, (size, size, 3)).copy()
    elif scene.background == "gradient":
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
        ramp = (xs - 0.5) * math.cos(scene.gradient_angle) + (ys - 0.5) * math.sin(scene.gradient_angle)
        ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
        img = a + (b - a) * ramp[..., None]
    else:
        # Low-frequency blotches plus fine grain, from the scene's own seed so renders agree across sizes.
        noise_rng = np.random.default_rng(scene.seed + 7_777_777)
        coarse = cv2.resize(noise_rng.random((8, 8)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        fine = cv2.resize(noise_rng.random((64, 64)).astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
        mix = np.clip(0.75 * coarse + 0.25 * fine, 0, 1)
        img = a + (b - a) * mix[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def _pattern(obj: SceneObject, size: int, window: tuple[slice, slice]) -> np.ndarray:
    """(h, w) bool over ``window`` (rows, columns) of a (size, size) canvas: where ``obj``'s class
    pattern is dark, in the object's rotated frame."""
    rows, cols = window
    ys, xs = np.mgrid[rows, cols].astype(np.float32) + 0.5
    dx, dy = xs / size - obj.center[0], ys / size - obj.center[1]
    cos, sin = math.cos(obj.rotation), math.sin(obj.rotation)
    u = (dx * cos + dy * sin) / PATTERN_PERIOD + obj.pattern_phase[0]
    v = (-dx * sin + dy * cos) / PATTERN_PERIOD + obj.pattern_phase[1]
    kind = PATTERNS[obj.shape]
    if kind == "stripes":
        return (u % 1.0) < 0.5
    if kind == "checks":
        return ((u % 1.0) < 0.5) ^ ((v % 1.0) < 0.5)
    if kind == "dots":
        return np.hypot(u % 1.0 - 0.5, v % 1.0 - 0.5) < 0.3
    return (np.hypot(dx, dy) / PATTERN_PERIOD + obj.pattern_phase[0]) % 1.0 < 0.5  # rings


def _polygon(obj: SceneObject, size: int) -> np.ndarray:
    """Vertices (N, 2) in pixel (x, y) of ``obj`` on a ``size`` canvas."""
    if obj.shape == "circle":
        angles = np.linspace(0, 2 * math.pi, 96, endpoint=False)
        radii = np.ones_like(angles)
    elif obj.shape == "square":
        angles = np.arange(4) * math.pi / 2 + math.pi / 4
        radii = np.full(4, 1.0)  # circumradius: the square's side is radius * sqrt(2)
    elif obj.shape == "triangle":
        angles = np.arange(3) * 2 * math.pi / 3 - math.pi / 2
        radii = np.full(3, 1.1)  # slightly larger so its area is closer to the others'
    elif obj.shape == "star":
        angles = np.arange(10) * math.pi / 5 - math.pi / 2
        radii = np.where(np.arange(10) % 2 == 0, 1.15, 0.5)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")
    angles = angles + obj.rotation
    r = obj.radius * size * radii
    cx, cy = obj.center[0] * size, obj.center[1] * size
    return np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], axis=1)


def colour_mask(image: np.ndarray, colour: str, min_saturation: float = 0.45, hue_tolerance: float = 25.0) -> np.ndarray:
    """Pixels of an (H, W, 3) uint8 RGB image in the object colour ``colour``, found without any model:
    saturated and bright, within ``hue_tolerance`` degrees of the colour's hue (backgrounds are muted)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HSV_FULL).astype(np.float32)
    hue = hsv[..., 0] / 255.0 * 360.0
    saturation, value = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    distance = np.abs((hue - _HUES[colour] + 180.0) % 360.0 - 180.0)
    return (distance <= hue_tolerance) & (saturation >= min_saturation) & (value >= 0.45)


def classify_shape(mask: np.ndarray) -> str | None:
    """The shape of the largest blob of a boolean mask, from its outline: a star is far from convex,
    a triangle and a square simplify to 3 and 4 corners, a circle to many. None if there is no blob."""
    contours, _ = cv2.findContours(np.asarray(mask, dtype=np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    area = cv2.contourArea(contour)
    if area < 20:
        return None
    hull = cv2.contourArea(cv2.convexHull(contour))
    if hull > 0 and area / hull < 0.8:
        return "star"
    corners = len(cv2.approxPolyDP(contour, 0.04 * cv2.arcLength(contour, True), True))
    if corners == 3:
        return "triangle"
    if corners == 4:
        return "square"
    return "circle"
