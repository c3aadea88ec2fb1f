"""Stage 6, ``reedit``: the re-editing step of PSR's data pipeline (arXiv 2512.01236). After the references were
made from the target's crops, an image-editing model (FLUX.1 Kontext by default) edits the target: one subject gets
a new accessory (Attribute), a new action (Action), or the scene changes (Background). The instruction stage then
describes the edited target, so the instruction asks for something the references do not show and a model cannot
satisfy it by copying them.

A sample is edited when its task is in ``reedit.tasks`` (drawn with probability ``reedit.prob``) and its
instruction can describe the edit: it has template slots (which the edit updates), or the instructions come from a
VLM that sees the edited target. Other samples pass through unchanged (``edit: null``). The edited image replaces
``target`` (the original stays as ``original_target``); an image the editor refuses rejects the sample
(``reedit_error``). ``reedit.enabled: false`` passes everything through.
"""
from __future__ import annotations

import random

from psrl.datagen import templates
from psrl.datagen.generation import RendererStage
from psrl.datagen.runner import kept, rejected
from psrl.images import save_image
from psrl.seeding import stable_seed
from psrl.data.records import Record, RecordError, SubjectRef

EDITED_DIR = "edited"


class ReeditStage(RendererStage):
    name = "reedit"
    input_stage = "references"

    def setup(self) -> None:
        pass  # the editor loads on the first edit (get_renderer): a run that edits nothing loads no model

    def plan(self, e: dict) -> tuple[str, dict] | None:
        """``(editor instruction, slots after the edit)`` for sample ``e``, or ``None`` to leave it unedited."""
        r = self.cfg.reedit
        if not r.enabled or e["task"] not in r.tasks:
            return None
        if not e.get("slots") and not self.cfg.instructions.vlm.url:
            return None  # the template instruction of a slot-less sample is its prompt: it could not say the edit
        rng = random.Random(stable_seed(e["seed"], "reedit", bits=31))
        if rng.random() >= r.prob:
            return None
        return templates.draw_edit(e["task"], e["phrases"], e.get("slots") or {}, rng)

    def process(self, batch: list[dict]) -> list[dict]:
        plans = {e["id"]: self.plan(e) for e in batch}
        jobs = [(e, *plans[e["id"]]) for e in batch if plans[e["id"]] is not None]
        failed: dict[str, str] = {}
        if jobs:
            try:
                self._edit(jobs)
            except RecordError:
                for job in jobs:  # find the target the editor refuses, keep the others
                    try:
                        self._edit([job])
                    except RecordError as err:
                        failed[job[0]["id"]] = str(err)
        out = []
        for e in batch:
            plan = plans[e["id"]]
            if plan is None:
                out.append(kept(e, edit=None))
            elif e["id"] in failed:
                out.append(rejected(e, "reedit_error", failed[e["id"]]))
            else:
                out.append(kept(e, target=self._path(e), original_target=e["target"], edit=plan[0], slots=plan[1]))
        return out

    def extra_stats(self, entries: list[dict]) -> dict:
        return {"edited": sum(1 for e in entries if e.get("edit"))}

    def _path(self, e: dict) -> str:
        return f"{EDITED_DIR}/{e['id']}.png"

    def _edit(self, jobs: list[tuple[dict, str, dict]]) -> None:
        records = [Record(id=e["id"], prompt=text, subjects=(SubjectRef(image=e["target"], phrase="image"),))
                   for e, text, _ in jobs]
        images = self.get_renderer()(records, [stable_seed(e["seed"], "reedit_image", bits=31) for e, _, _ in jobs])
        for (e, _, _), image in zip(jobs, images):
            save_image(image, self.dataset / self._path(e))
