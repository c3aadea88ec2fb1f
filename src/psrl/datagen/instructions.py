"""Stage 7, ``instructions``: the instruction that turns a sample's references into its target, per task
(Attribute, Action, Background, Position, Complex, Three, Four).

**The appearance rule.** An instruction names each subject by its category and may say what it wears, does, where it
is and how subjects relate; it may not describe how a subject looks (colour, material, texture, pattern, size,
shape), because the reference images carry that and a description would leak it through the text (PSR's reason,
arXiv 2512.01236). :func:`appearance_violations` enforces it: no appearance word among the three words before a
subject's name in the same clause, and no ``<subject> is|are|looks|appears [very] <appearance word>``. Every
instruction, template or VLM, must pass, or the sample is rejected (``appearance_in_instruction``).

Template path: template prompts reuse their slots (scene, attributes, actions); Position instructions use the
relation measured on the target's boxes with the position metric's own rule, so the metric agrees with the data
(``ambiguous_position`` when the boxes overlap). A sample whose prompt came from an LLM (no slots) uses its prompt as
the instruction, or ``The <a> is <relation> the <b>.`` for Position.

VLM path (``instructions.vlm.url``): the VLM sees the target and the references and must answer
``[Instruction]: ...`` naming every subject (``vlm_unparsable``, ``vlm_missing_subject``, ``vlm_error``), obeying
the appearance rule, and for Position containing the measured relation (``vlm_wrong_relation``).
"""
from __future__ import annotations

import re

from psrl.datagen import templates
from psrl.datagen.boxes import relation_from_boxes
from psrl.datagen.llm import ChatStage, image_part
from psrl.datagen.runner import kept, rejected

APPEARANCE_WORDS = frozenset("""
red orange yellow green blue purple violet pink brown black white gray grey golden gold silver beige turquoise teal
navy crimson maroon ivory cream tan colorful colourful multicolored multicoloured pastel vibrant pale dark bright
fluffy furry fuzzy hairy shaggy curly feathered scaly spotted striped dotted checkered plaid patterned speckled
shiny glossy matte metallic wooden plastic leather glass ceramic rusty sleek smooth rough transparent translucent
small large big tiny huge giant little tall short round square rectangular long slim thin fat chubby plump
old new vintage antique worn battered cute adorable beautiful ugly elegant
""".split())  # noqa: SIM905 - a word block reads better than a 90-item list


def appearance_violations(text: str, phrases: list[str], extra_words=()) -> list[str]:
    """Appearance words describing a subject in ``text`` (see the module docstring), as ``"word phrase"``."""
    words = APPEARANCE_WORDS | {w.lower() for w in extra_words}
    tokens = re.findall(r"[a-z0-9'-]+|[,.;:!?()]", text.lower())  # punctuation ends a noun phrase
    found = []
    for phrase in phrases:
        ptoks = phrase.lower().split()
        n = len(ptoks)
        for i in range(len(tokens) - n + 1):
            window = tokens[i:i + n]
            if window[:-1] != ptoks[:-1] or window[-1] not in (ptoks[-1], ptoks[-1] + "s", ptoks[-1] + "es"):
                continue
            before = tokens[max(0, i - 3):i]
            while any(not t[0].isalnum() for t in before):
                before = before[1:]
            after = tokens[i + n:i + n + 3]
            hits = [w for w in before if w in words]
            if after[:1] and after[0] in ("is", "are", "looks", "appears"):
                nxt = after[1:2] if after[1:2] != ["very"] else after[2:3]
                hits += [w for w in nxt if w in words]
            found += [f"{w} {phrase}" for w in hits]
    return found


def measured_relation(entry: dict) -> str | None:
    return relation_from_boxes(entry["boxes"][0], entry["boxes"][1])


def template_instruction(entry: dict) -> tuple[str | None, str | None, str]:
    """``(instruction, None, "")`` or ``(None, reason, detail)`` for the template path."""
    task, phrases, slots = entry["task"], entry["phrases"], entry.get("slots") or {}
    relation = None
    if task == "Position":
        relation = measured_relation(entry)
        if relation is None:
            return None, "ambiguous_position", f"boxes {entry['boxes'][:2]} give no clear relation"
    if slots:
        return templates.instruction(task, phrases, slots, relation), None, ""
    if task == "Position":
        return f"The {phrases[0]} {templates.be(phrases[0])} {relation} the {phrases[1]}.", None, ""
    return entry["prompt"], None, ""


def vlm_request(entry: dict, relation: str | None) -> str:
    names = "; ".join(f"image {i + 2}: the {p}" for i, p in enumerate(entry["phrases"]))
    rel = (f" It must state that the {entry['phrases'][0]} {templates.be(entry['phrases'][0])} {relation} the "
           f"{entry['phrases'][1]}."
           if relation else "")
    return (f"Image 1 is a target photo. The other images are reference photos of its subjects ({names}).\n"
            f"Write the instruction that asks an image generator to create image 1 from the reference images. "
            f"Task type: {entry['task']}. Refer to each subject only as 'the <name>' with the names given. Describe "
            f"what the subjects wear, do, where they are and how they are arranged, but never how they look "
            f"(no colours, materials, textures, patterns or sizes of the subjects).{rel}\n"
            f"Reply in the format:\n[Instruction]: <the instruction>")


class InstructionsStage(ChatStage):
    name = "instructions"
    input_stage = "reedit"

    endpoint_field = "vlm"

    def from_template(self, e: dict) -> dict:
        return self._finish(e, *template_instruction(e), source="template")

    def from_endpoint(self, e: dict) -> dict:
        relation = None
        if e["task"] == "Position":
            relation = measured_relation(e)
            if relation is None:
                return rejected(e, "ambiguous_position", f"boxes {e['boxes'][:2]} give no clear relation")
        content = [image_part(self.dataset / e["target"])]
        content += [image_part(self.dataset / r) for r in e["references"]]
        content.append({"type": "text", "text": vlm_request(e, relation)})
        text, reply, rejection = self.ask(e, content, "Instruction")
        if rejection:
            return rejection
        if relation and relation not in text.lower():
            return rejected(e, "vlm_wrong_relation", f"the instruction does not say {relation!r}",
                            raw_reply=reply[:2000])
        return self._finish(e, text, None, "", source="vlm")

    def _finish(self, e: dict, text: str | None, reason: str | None, detail: str, *, source: str) -> dict:
        if reason:
            return rejected(e, reason, detail)
        bad = appearance_violations(text, e["phrases"], self.cfg.instructions.appearance_words)
        if bad:
            return rejected(e, "appearance_in_instruction", f"describes subjects' appearance: {bad}",
                            instruction=text)
        return kept(e, instruction=text, instruction_source=source)
