"""Pocket-world scenes: 1-4 subjects placed on a pastel background, with an instruction from a template of one of
PSRBench's seven subsets (arXiv 2512.01236, Sec. 4.1: Attribute, Action, Background, Position, Complex, Three,
Four), and the parser that reads those instructions back into checkable constraints.

What each subset's instruction asks, and how a picture can be checked against it:

- Attribute: "a big {A} and a small {B}" -> ``bigger`` (A's box is larger than B's);
- Action: "the {A} is jumping and the {B} is resting" -> ``action`` per subject (a jumping subject floats over a
  shadow, a resting one stands on the ground without one);
- Background: "the {A} and the {B} on a {bg} background" -> ``background`` (the backdrop is the named pastel);
- Position: "the {A} is to the left of / to the right of / above / below the {B}" -> ``relation`` (PSRBench's
  box-centre rule, :func:`psrl.rewards.position.position_score`);
- Complex: "the {A} is jumping to the left of the {B}, which is resting, on a {bg} background" -> relation,
  actions and background;
- Three, Four: "from left to right: a {A}, a {B} and a {C}" -> ``order`` (box centres in that order).

Scene geometry is in fractions of the image side (x right, y down), so a scene draws the same at any size.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from psrl.world.subjects import BACKGROUNDS, Subject

SUBSETS: dict[str, int] = {"Attribute": 2, "Action": 2, "Background": 2, "Position": 2, "Complex": 2,
                           "Three": 3, "Four": 4}  # subset -> number of subjects (PSRBench's)
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
ACTIONS: tuple[str, ...] = ("jumping", "resting")


@dataclass(frozen=True)
class Scene:
    """One pocket-world scene.

    Attributes:
        subjects: 1-4 distinct subjects, in instruction order (PSRBench's category1..N).
        positions: each subject's centre ``(x, y)``, fractions of the image side, y down.
        sizes: each subject's radius, a fraction of the image side.
        background: a name of :data:`psrl.world.subjects.BACKGROUNDS`.
        instruction: the text prompt.
        subset: the PSRBench subset whose template made the instruction.
        actions: per subject ``"jumping"`` (drawn lifted, with a shadow), ``"resting"`` or ``""`` (no action).
    """

    subjects: tuple[Subject, ...]
    positions: tuple[tuple[float, float], ...]
    sizes: tuple[float, ...]
    background: str
    instruction: str
    subset: str
    actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class Constraint:
    """One checkable claim of an instruction: ``kind`` (``bigger``, ``action``, ``background``, ``relation``,
    ``order``), the subject indices it involves and a value (the action, background name or relation)."""

    kind: str
    subjects: tuple[int, ...]
    value: str = ""


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _two_halves(rng, radii, vertical: bool = False) -> list[tuple[float, float]]:
    """Subject 0 in the first half (left, or top when ``vertical``), subject 1 in the second."""
    out = []
    for half, r in enumerate(radii):
        along = _u(rng, 0.5 * half + r + 0.02, 0.5 * half + 0.5 - r - 0.02)
        across = _u(rng, 0.5 - 0.08, 0.5 + 0.08) if vertical else _u(rng, r + 0.1, 1 - r - 0.1)
        out.append((across, along) if vertical else (along, across))
    return out


def _grounded(rng, radii, actions) -> list[tuple[float, float]]:
    """Left/right halves on a common ground line: a resting subject stands on it, a jumping one floats above
    the shadow it casts there."""
    ground = _u(rng, 0.74, 0.82)
    xs = [x for x, _ in _two_halves(rng, radii)]
    return [(x, ground - (1.45 if a == "jumping" else 0.95) * r) for x, r, a in zip(xs, radii, actions)]


def sample_scene(rng: np.random.Generator, subjects, subset: str) -> Scene:
    """A random scene of ``subset`` (a key of :data:`SUBSETS`) with distinct subjects drawn from ``subjects``.

    Deterministic given ``rng``'s state. Raises ``ValueError`` for an unknown subset or too few subjects."""
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; known: {', '.join(SUBSETS)}")
    n = SUBSETS[subset]
    if len(subjects) < n:
        raise ValueError(f"subset {subset} needs {n} distinct subjects, got {len(subjects)}")
    chosen = tuple(subjects[int(i)] for i in rng.choice(len(subjects), size=n, replace=False))
    p = [s.phrase for s in chosen]
    background = list(BACKGROUNDS)[int(rng.integers(len(BACKGROUNDS)))]
    actions: tuple[str, ...] = ()
    if subset == "Attribute":
        big_first = bool(rng.integers(2))
        radii = [_u(rng, 0.17, 0.2), _u(rng, 0.1, 0.12)]
        if not big_first:
            radii.reverse()
        positions = _two_halves(rng, radii)
        sizes = ("big", "small") if big_first else ("small", "big")
        instruction = f"a {sizes[0]} {p[0]} and a {sizes[1]} {p[1]}"
    elif subset in ("Action", "Complex"):
        radii = [_u(rng, 0.12, 0.16), _u(rng, 0.12, 0.16)]
        actions = tuple(ACTIONS[int(i)] for i in rng.integers(2, size=2))
        relation = RELATIONS[int(rng.integers(2))]
        order = [0, 1] if relation == "to the left of" else [1, 0]
        placed = _grounded(rng, [radii[i] for i in order], [actions[i] for i in order])
        positions = [placed[order.index(i)] for i in range(2)]
        if subset == "Action":
            instruction = f"the {p[0]} is {actions[0]} and the {p[1]} is {actions[1]}"
        else:
            instruction = (f"the {p[0]} is {actions[0]} {relation} the {p[1]}, which is {actions[1]}, "
                           f"on a {background} background")
    elif subset == "Background":
        radii = [_u(rng, 0.13, 0.19), _u(rng, 0.13, 0.19)]
        positions = _two_halves(rng, radii)
        instruction = f"the {p[0]} and the {p[1]} on a {background} background"
    elif subset == "Position":
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        radii = [_u(rng, 0.11, 0.16), _u(rng, 0.11, 0.16)]
        first = relation in ("to the left of", "above")  # subject 0 in the first half
        order = [0, 1] if first else [1, 0]
        placed = _two_halves(rng, [radii[i] for i in order], vertical=relation in ("above", "below"))
        positions = [placed[order.index(i)] for i in range(2)]
        instruction = f"the {p[0]} is {relation} the {p[1]}"
    else:  # Three, Four: a row, left to right in instruction order
        slot = 1.0 / n
        radii = [_u(rng, 0.33 * slot, 0.42 * slot) for _ in range(n)]
        positions = [(slot * (i + 0.5) + _u(rng, -0.4, 0.4) * (slot / 2 - r), _u(rng, 0.32, 0.68))
                     for i, r in enumerate(radii)]
        listed = ", ".join(_article(q) for q in p[:-1])
        instruction = f"from left to right: {listed} and {_article(p[-1])}"
    return Scene(subjects=chosen, positions=tuple((float(x), float(y)) for x, y in positions),
                 sizes=tuple(float(r) for r in radii), background=background, instruction=instruction,
                 subset=subset, actions=actions)


def parse_instruction(instruction: str, phrases: list[str] | tuple[str, ...]) -> list[Constraint]:
    """The constraints an instruction states about the subjects named by ``phrases`` (in record order), read with
    the grammar of the templates above; an instruction outside that grammar yields fewer (or no) constraints.

    Returns constraints in a fixed order: background, bigger, action (per subject), relation, order."""
    text = " ".join(instruction.lower().split())
    quoted = [re.escape(p.lower()) for p in phrases]
    out: list[Constraint] = []
    m = re.search(r"on an? ([a-z ]+?) background", text)
    if m and m.group(1) in BACKGROUNDS:
        out.append(Constraint("background", (), m.group(1)))
    sizes = {}
    for i, q in enumerate(quoted):
        m = re.search(rf"\b(big|small) {q}\b", text)
        if m:
            sizes[i] = m.group(1)
    bigs = [i for i, v in sizes.items() if v == "big"]
    smalls = [i for i, v in sizes.items() if v == "small"]
    out += [Constraint("bigger", (b, s)) for b in bigs for s in smalls]
    for i, q in enumerate(quoted):
        m = re.search(rf"\b{q}(?:, which)? is ({'|'.join(ACTIONS)})\b", text)
        if m:
            out.append(Constraint("action", (i,), m.group(1)))
    rel = "|".join(RELATIONS)
    for i, qa in enumerate(quoted):
        for j, qb in enumerate(quoted):
            if i != j:
                m = re.search(rf"\b{qa} is (?:(?:{'|'.join(ACTIONS)}) )?({rel}) the {qb}\b", text)
                if m:
                    out.append(Constraint("relation", (i, j), m.group(1)))
    if "from left to right" in text and len(phrases) > 1:
        found = [(text.find(q.replace("\\", "")), i) for i, q in enumerate(p.lower() for p in phrases)]
        if all(pos >= 0 for pos, _ in found):
            out.append(Constraint("order", tuple(i for _, i in sorted(found))))
    return out
