"""The pocket world's subjects: a shape, a saturated colour and a texture, each one a reference can carry.

6 shapes x 8 colours x 3 textures = 144 subjects, in a fixed order (shape, then colour, then texture), so a subject's
index and id never change between runs. :func:`split_subjects` holds a quarter out for evaluation, chosen so every
shape, colour and texture still occurs in training (held-out subjects are new *combinations*, not new attributes).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")
# saturated sRGB colours, at least 70 apart (Euclidean, 0-255 units) so nearest-colour classification is unambiguous
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 135, 15),
    "yellow": (235, 205, 15),
    "green": (35, 165, 55),
    "cyan": (15, 185, 205),
    "blue": (35, 75, 220),
    "purple": (135, 55, 195),
    "magenta": (220, 45, 165),
}
# texture drawn over the body in this near-black: dark enough to separate from every colour and background
TEXTURES: tuple[str, ...] = ("solid", "striped", "dotted")
TEXTURE_RGB: tuple[int, int, int] = (25, 25, 25)
# pastel backgrounds (saturation <= 0.25, every subject colour is >= 0.7): a subject never blends into one
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "pink": (250, 208, 215),
    "light blue": (205, 225, 250),
    "mint": (205, 240, 215),
    "cream": (248, 240, 205),
    "lavender": (228, 215, 245),
    "peach": (252, 222, 195),
    "light grey": (222, 222, 222),
}
# the shadow under a jumping subject: mid grey, neither a subject colour nor a texture
SHADOW_RGB: tuple[int, int, int] = (125, 125, 125)


@dataclass(frozen=True)
class Subject:
    """One pocket-world subject.

    Attributes:
        id: ``"<colour>-<texture>-<shape>"``, e.g. ``"red-striped-star"``; safe as a file name.
        shape: one of :data:`SHAPES`.
        colour: one of :data:`COLOURS` (the body's RGB).
        texture: one of :data:`TEXTURES`: ``solid``, ``striped`` (diagonal near-black stripes) or ``dotted``
            (a grid of near-black dots) - the detail a reference carries beyond shape and colour.
    """

    id: str
    shape: str
    colour: str
    texture: str

    @property
    def phrase(self) -> str:
        """The words that name it in instructions and PSRBench ``category`` fields: ``"red striped star"``; a solid
        subject has no texture word (``"red star"``)."""
        words = [self.colour] + ([] if self.texture == "solid" else [self.texture]) + [self.shape]
        return " ".join(words)

    @property
    def rgb(self) -> tuple[int, int, int]:
        return COLOURS[self.colour]


def make_subject(shape: str, colour: str, texture: str) -> Subject:
    """The subject with these attributes. Raises ``ValueError`` naming an unknown attribute."""
    for value, known, name in ((shape, SHAPES, "shape"), (colour, tuple(COLOURS), "colour"),
                               (texture, TEXTURES, "texture")):
        if value not in known:
            raise ValueError(f"unknown {name} {value!r}; known: {', '.join(known)}")
    return Subject(id=f"{colour}-{texture}-{shape}", shape=shape, colour=colour, texture=texture)


@lru_cache(maxsize=1)
def all_subjects() -> tuple[Subject, ...]:
    """Every subject (144), ordered by shape, colour, texture; deterministic."""
    return tuple(make_subject(s, c, t) for s in SHAPES for c in COLOURS for t in TEXTURES)


@lru_cache(maxsize=1)
def subjects_by_phrase() -> dict[str, Subject]:
    """``phrase -> Subject`` (phrases are unique), how rewards read a record's subjects."""
    return {s.phrase: s for s in all_subjects()}


def split_subjects() -> tuple[tuple[Subject, ...], tuple[Subject, ...]]:
    """``(train, held_out)``: 108 and 36 subjects. A subject is held out when (shape index + colour index +
    texture index) is divisible by 4, which spreads the held-out quarter over every shape, colour and texture."""
    colours = list(COLOURS)
    train, held = [], []
    for s in all_subjects():
        k = SHAPES.index(s.shape) + colours.index(s.colour) + TEXTURES.index(s.texture)
        (held if k % 4 == 0 else train).append(s)
    return tuple(train), tuple(held)
