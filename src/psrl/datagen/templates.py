"""Word lists and sentence templates for template prompts, reference contexts and instructions (our choices).

Scenes, accessories and actions are generic enough for any Objects365 category. None of them describes a
subject's own appearance: what subjects wear, do and where they are is fair game in an instruction, how they look
is carried by the reference images.
"""
from __future__ import annotations

import random

SCENES = (
    "on a sunny kitchen counter", "in a quiet backyard", "on a floating island above the clouds",
    "in a snowy forest clearing", "on a sandy beach at sunset", "in a cozy living room by the fireplace",
    "in a barren desert under a bright sun", "on a wooden dock by a calm lake", "in a neon-lit city street at night",
    "in a children's playroom full of toys", "on a mossy rock in a misty forest", "in a sunlit greenhouse",
    "on a picnic blanket in a flower meadow", "in a spaceship cockpit with stars outside the window",
    "on a rooftop terrace overlooking the city", "in an old library with tall bookshelves",
    "on a marble table in a bright cafe", "in a rainy alley with glowing puddles", "on a snowy mountain peak",
    "in a medieval castle courtyard", "on a stage under spotlights", "in a tropical rainforest",
)

ACCESSORIES = (
    "wearing a tiny knitted hat", "wearing a superhero cape", "wearing a crown", "wearing sunglasses",
    "tied with a ribbon bow", "wearing a flower garland", "wearing a party hat", "wrapped in a woollen scarf",
    "draped with fairy lights", "wearing a pirate hat", "wearing a pair of headphones", "wearing a tiny backpack",
)

ACTIONS = (
    "floating in mid-air", "resting on a stack of books", "balancing on the edge of a table", "lying on its side",
    "tilted at an angle", "leaning against a wall", "peeking out of a cardboard box", "sitting on a cushion",
    "half-buried in fallen leaves", "spinning slowly", "perched on a windowsill", "sliding down a small ramp",
)

DETAILS = (
    "soft morning light falls across the scene", "a light breeze scatters a few leaves",
    "warm lamps glow in the background", "long shadows stretch over the ground", "a thin mist hangs in the air",
    "colourful bokeh lights fill the background",
)

# the canonical forms of the PSRBench position vocabulary (wang-shulei/PSR@c719168
# eval/semantic-alignment/position-alignment.py); a Position instruction uses exactly one
RELATIONS = ("to the left of", "to the right of", "above", "below")

WHITE_BACKGROUND = "on a plain white background"


# Objects365 names that end in "s" but take a singular verb
_SINGULAR_S = frozenset({"billiards"})


def is_plural(phrase: str) -> bool:
    """Whether a category name reads as a plural ("green beans", "scissors"), not "bus", "wine glass", "tennis"."""
    last = phrase.strip().lower().split()[-1] if phrase.strip() else ""
    return last.endswith("s") and not last.endswith(("ss", "us", "is")) and phrase.strip().lower() not in _SINGULAR_S


def be(phrase: str) -> str:
    return "are" if is_plural(phrase) else "is"


def article(phrase: str) -> str:
    if is_plural(phrase):
        return phrase
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def join_the(phrases: list[str]) -> str:
    """``the a and the b and the c`` (PSRBench's Three/Four style)."""
    return " and ".join(f"the {p}" for p in phrases)


def _without(options: tuple[str, ...], phrases: list[str]) -> list[str]:
    """Options that do not name one of the sample's subjects (no "wearing a tiny backpack" next to a backpack)."""
    from psrl.datagen.llm import mentions

    return [o for o in options if not any(mentions(o, p) for p in phrases)]


def draw_slots(task: str, phrases: list[str], rng: random.Random) -> dict:
    """The template content of one sample: its scene and, per task, attributes, actions, a relation, a detail."""
    n = len(phrases)
    slots: dict = {"scene": rng.choice(_without(SCENES, phrases))}
    if task in ("Attribute", "Complex"):
        slots["attributes"] = rng.sample(_without(ACCESSORIES, phrases), n)
    if task in ("Action", "Complex"):
        slots["actions"] = rng.sample(_without(ACTIONS, phrases), n)
    if task == "Position":
        slots["relation"] = rng.choice(RELATIONS)
    if task == "Complex":
        slots["detail"] = rng.choice(_without(DETAILS, phrases))
    return slots


def t2i_prompt(task: str, phrases: list[str], slots: dict) -> str:
    """The text-to-image prompt that renders the target."""
    p = phrases
    scene = slots["scene"]
    if task in ("Attribute", "Action"):
        a = slots["attributes" if task == "Attribute" else "actions"]
        return f"A photo of {article(p[0])} {a[0]} and {article(p[1])} {a[1]}, {scene}."
    if task == "Position":
        return f"A photo of {article(p[0])} {slots['relation']} {article(p[1])}, {scene}."
    if task == "Complex":
        return (f"A detailed photo of {article(p[0])} {slots['actions'][0]} {scene}, while {article(p[1])} "
                f"{slots['attributes'][1]} {'stay' if is_plural(p[1]) else 'stays'} nearby; {slots['detail']}.")
    listed = ", ".join(article(x) for x in p[:-1]) + f" and {article(p[-1])}"
    return f"A photo of {listed} together {scene}."


# alike on purpose: t2i_prompt and instruction phrase the same slots per task, once for the renderer and once
# for the instruction the references must satisfy
def instruction(task: str, phrases: list[str], slots: dict, relation: str | None = None) -> str:
    """The instruction that turns the references into the target: names subjects only by category, says what they
    wear / do / where they are; ``relation`` (Position) is the one measured on the target's boxes."""
    p = phrases
    scene = slots["scene"]
    if task == "Attribute":
        a = slots["attributes"]
        return f"The {p[0]} {be(p[0])} {a[0]} and the {p[1]} {be(p[1])} {a[1]}, {scene}."
    if task == "Action":
        a = slots["actions"]
        return f"The {p[0]} {be(p[0])} {a[0]}, and the {p[1]} {be(p[1])} {a[1]}, both {scene}."
    if task == "Position":
        if relation is None:
            raise ValueError("a Position instruction needs the measured relation")
        return f"The {p[0]} {be(p[0])} {relation} the {p[1]}, {scene}."
    if task == "Complex":
        return (f"The {p[0]} {be(p[0])} {slots['actions'][0]} {scene}, while the {p[1]}, {slots['attributes'][1]}, "
                f"{'stay' if is_plural(p[1]) else 'stays'} nearby; {slots['detail']}.")
    verb = "are" if len(p) > 1 else be(p[0])
    return f"{join_the(p)[0].upper()}{join_the(p)[1:]} {verb} {scene}."


def reference_instruction(phrase: str, rng: random.Random, white_background_prob: float,
                          avoid_scene: str | None = None) -> str:
    """The single-subject instruction for the reference model: the same subject on white or in a new scene."""
    if rng.random() < white_background_prob:
        return f"The same {phrase} {WHITE_BACKGROUND}."
    scene = rng.choice([s for s in _without(SCENES, [phrase]) if s != avoid_scene])
    return f"The same {phrase} {scene}."


def draw_edit(task: str, phrases: list[str], slots: dict, rng: random.Random) -> tuple[str, dict]:
    """PSR's re-editing step: ``(instruction for the image editor, the sample's slots after the edit)``.

    Attribute: one subject gets a new accessory; Action: one subject a new action; Background: a new scene. The new
    value differs from what the target already shows, and the slots are updated so the template instruction
    describes the edited target (a sample without slots keeps ``{}``: its instruction then comes from a VLM).
    """
    new = {k: list(v) if isinstance(v, list) else v for k, v in slots.items()}
    if task == "Background":
        scene = rng.choice([s for s in _without(SCENES, phrases) if s != slots.get("scene")])
        if slots:
            new["scene"] = scene
        return f"Change the setting so that the subjects are {scene}; keep every subject exactly as it is.", new
    key, options = {"Attribute": ("attributes", ACCESSORIES), "Action": ("actions", ACTIONS)}[task]
    i = rng.randrange(len(phrases))
    value = rng.choice([o for o in _without(options, phrases) if o not in slots.get(key, [])])
    if key in new:
        new[key][i] = value
    return f"Edit the image so that the {phrases[i]} {be(phrases[i])} {value}; keep everything else unchanged.", new
