"""Stage 2, ``prompts``: a multi-subject text-to-image prompt per sample.

Templates (default) fill a per-task sentence from :mod:`psrl.datagen.templates` and record the slots (scene,
attributes, actions, relation) so the instruction stage can reuse them. With ``prompts.llm.url`` an
OpenAI-compatible LLM writes the prompt instead; its reply must contain ``[Prompt]: ...`` naming every subject, or
the sample is rejected (``llm_unparsable``, ``llm_missing_subject``, ``llm_error``) with the raw reply kept.
"""
from __future__ import annotations

import random

from psrl.datagen import templates
from psrl.datagen.llm import ChatStage
from psrl.datagen.runner import kept
from psrl.seeding import stable_seed

TASK_GUIDANCE = {
    "Attribute": "give each subject a distinct accessory or attribute (what it wears or carries)",
    "Action": "give each subject a distinct action or pose",
    "Background": "place the subjects in a specific, richly described background",
    "Position": "state one clear spatial relation between the first two subjects (to the left of, to the right of, "
                "above or below)",
    "Complex": "write a long prompt that combines a detailed background, actions and small scene details",
    "Three": "show all subjects together in one described scene",
    "Four": "show all subjects together in one described scene",
}


def llm_request(task: str, phrases: list[str]) -> str:
    listed = "; ".join(phrases)
    return (f"Write one prompt for a text-to-image model that shows exactly these {len(phrases)} subjects together "
            f"in a single photo-realistic scene: {listed}.\nTask: {TASK_GUIDANCE[task]}.\n"
            "Name every subject with exactly the words given. Each subject must be clearly visible and separate "
            "from the others.\nReply with one line in the format:\n[Prompt]: <the prompt>")


class PromptsStage(ChatStage):
    name = "prompts"
    input_stage = "subjects"

    def from_template(self, e: dict) -> dict:
        rng = random.Random(stable_seed(e["seed"], "prompts", bits=31))
        slots = templates.draw_slots(e["task"], e["phrases"], rng)
        return kept(e, prompt=templates.t2i_prompt(e["task"], e["phrases"], slots), prompt_source="template",
                    slots=slots)

    def from_endpoint(self, e: dict) -> dict:
        prompt, _, rejection = self.ask(e, llm_request(e["task"], e["phrases"]), "Prompt")
        if rejection:
            return rejection
        # no template slots: the template instruction path then works from the prompt text itself
        return kept(e, prompt=prompt, prompt_source="llm", slots={})
