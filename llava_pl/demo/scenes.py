"""The demo's scenes: one to three shapes on a 3 x 3 grid, sampled from a seeded generator and drawn as images."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageChops, ImageDraw, ImageFilter

KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 155, 55),
    "blue": (35, 75, 215),
    "yellow": (235, 200, 10),
    "purple": (135, 55, 175),
    "orange": (245, 130, 15),
    "black": (25, 25, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
# Each shape sits centred in one cell of a 3x3 grid, and that cell names its position. A size class is one side
# length, a fraction of the cell's side, so a vision tower whose patch is one cell sees each shape whole in one
# patch. Exact colours and one side per size make a shape's patch feature nearly a function of its colour, kind and
# size alone (docs/demo_findings.md): anything else in an image token slows down learning which shape a
# question names. The light background's tint still varies, so no two images are the same file.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.65, "large": 0.85}
POSITION_GRID: tuple[tuple[str, str, str], ...] = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
POSITIONS: tuple[str, ...] = tuple(p for row in POSITION_GRID for p in row)

_SUPERSAMPLE = 4  # draw at 4x and box-downsample for anti-aliased edges
OUTLINE_RGB: tuple[int, int, int] = (25, 25, 25)


@dataclass(frozen=True)
class Shape:
    """One shape of a scene; bbox is [x1, y1, x2, y2) in pixels (x2/y2 exclusive)."""

    kind: str
    color: str
    size: str
    position: str
    bbox: tuple[int, int, int, int]

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLORS[self.color]

    @property
    def cx(self) -> float:
        return (self.bbox[0] + self.bbox[2]) / 2

    @property
    def cy(self) -> float:
        return (self.bbox[1] + self.bbox[3]) / 2

    @property
    def name(self) -> str:
        return f"{self.color} {self.kind}"

    @property
    def full_name(self) -> str:
        return f"{self.size} {self.color} {self.kind}"

    def to_meta(self) -> dict:
        return {
            "kind": self.kind,
            "color": self.color,
            "size": self.size,
            "position": self.position,
            "bbox": list(self.bbox),
        }


@dataclass(frozen=True)
class Scene:
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]


def position_name(cx: float, cy: float, image_size: int) -> str:
    """Name of the 3x3 grid cell containing the point (cx, cy)."""
    col = min(2, max(0, int(cx * 3 // image_size)))
    row = min(2, max(0, int(cy * 3 // image_size)))
    return POSITION_GRID[row][col]


def side_length(size: str, image_size: int) -> int:
    """Side in pixels of a shape of this size class."""
    cell = image_size // 3
    return min(cell - 2, round(SIZE_FRACTIONS[size] * cell))  # at least one background pixel on each side


def sample_scene(rng: random.Random, image_size: int, count_weights: Sequence[float] | None = None) -> Scene:
    """One to three shapes of distinct kinds and colours, each in its own grid cell, on a light background.

    ``count_weights``: relative weights of one, two and three shapes (None: equally likely).
    """
    cell = image_size // 3
    background = tuple(rng.randint(225, 255) for _ in range(3))
    n = rng.randint(1, 3) if count_weights is None else rng.choices((1, 2, 3), weights=count_weights)[0]
    kinds, colors, cells = rng.sample(KINDS, n), rng.sample(list(COLORS), n), rng.sample(range(9), n)
    shapes: list[Shape] = []
    for kind, color, index in zip(kinds, colors, cells):
        size = rng.choice(SIZES)
        side = side_length(size, image_size)
        row, col = divmod(index, 3)
        x1 = col * cell + (cell - side) // 2
        y1 = row * cell + (cell - side) // 2
        box = (x1, y1, x1 + side, y1 + side)
        shapes.append(Shape(kind, color, size, POSITIONS[index], box))
    return Scene(background, tuple(shapes))  # type: ignore[arg-type]


def _draw_mask(draw: ImageDraw.ImageDraw, s: Shape, f: int) -> None:
    """Fill a shape's area (at ``f`` times the image's resolution) with 255."""
    x1, y1, x2, y2 = (v * f for v in s.bbox)
    cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
    if s.kind == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=255)
    elif s.kind == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=255)
    elif s.kind == "triangle":
        draw.polygon([(cx, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=255)
    elif s.kind == "diamond":
        draw.polygon([(cx, y1), (x2 - 1, cy), (cx, y2 - 1), (x1, cy)], fill=255)
    elif s.kind == "cross":
        half = w * 0.18
        draw.rectangle([cx - half, y1, cx + half - 1, y2 - 1], fill=255)
        draw.rectangle([x1, cy - half, x2 - 1, cy + half - 1], fill=255)
    else:
        raise ValueError(f"unknown kind {s.kind!r}")


def render_scene(scene: Scene, image_size: int, outline: int = 0) -> Image.Image:
    """Render a scene to an RGB PIL image; ``outline`` > 0 draws each shape's rim, that many pixels wide, in
    ``OUTLINE_RGB`` whatever its colour."""
    f = _SUPERSAMPLE
    size = (image_size * f, image_size * f)
    img = Image.new("RGB", size, scene.background)
    for s in scene.shapes:
        mask = Image.new("L", size, 0)
        _draw_mask(ImageDraw.Draw(mask), s, f)
        img.paste(s.rgb, mask=mask)
        if outline > 0:
            # the rim lies inside the shape's box: erode only there, with a margin of background around it
            x1, y1, x2, y2 = s.bbox
            box = ((x1 - 1) * f, (y1 - 1) * f, (x2 + 1) * f, (y2 + 1) * f)
            area = mask.crop(box)
            inner = area
            for _ in range(outline * f):  # k 3x3 erosions: one (2k+1)x(2k+1) erosion, at a fraction of its cost
                inner = inner.filter(ImageFilter.MinFilter(3))
            img.paste(OUTLINE_RGB, box, mask=ImageChops.subtract(area, inner))
    return img.resize((image_size, image_size), Image.Resampling.BOX)


def grid_row(s: Shape) -> int:
    """Row of a shape's grid cell, 0 at the top."""
    return POSITIONS.index(s.position) // 3


def grid_col(s: Shape) -> int:
    """Column of a shape's grid cell, 0 on the left."""
    return POSITIONS.index(s.position) % 3

