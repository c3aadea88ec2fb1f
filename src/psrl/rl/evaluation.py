"""The GRPO trainer's evaluation: ODE samples of the fixed eval prompts, their grid, and every eval metric.

Member ``j`` of eval prompt ``i`` is seeded by ``(eval.seed, j, i)`` for the whole run, so two evaluations of the
same weights give the same images, and an evaluation's first members (``j = 0``) are the images ``psrl train``
shows before and after training (:meth:`Evaluation.snapshot`). One evaluation is kept by the trainer
(``GRPOTrainer.last_eval``) so the demo's final snapshot reuses the trainer's final evaluation instead of sampling
the eval set a second time.

The functions take the trainer (duck-typed): ``cfg``, ``policy``, ``ema`` (or None), ``autocast()``,
``eval_records``, ``rewards``, ``heldout_rewards``, ``eval_embed``, ``run_dir``, ``updates``, ``start_step`` and
``last_eval`` (read and set here).
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext

import torch
from torch import Tensor

from psrl.images import save_image
from psrl.rl.eval_metrics import HELDOUT_PREFIX, eval_scores_and_metrics, reward_scores
from psrl.rl.sampler import sample_seed
from psrl.rl.tracking import image_grid


@dataclasses.dataclass
class Evaluation:
    """One evaluation of the eval records (main process).

    Attributes:
        step: the step it evaluated (0: before training).
        updates: the trainer's optimizer updates when it ran (with ``step``, says whether it is still current).
        images: ``[B, 3, H, W]`` float32 CPU in ``[0, 1]``, record-major: ``eval.group_size`` images per record.
        members: the group member ``j`` of each image (``0 .. eval.group_size - 1``).
        scores: ``{trained reward name: [B] float32}`` and ``{"held-out " + eval.rewards name: [B]}`` (NaN:
            unscorable).
        metrics: the ``eval/*`` metrics (:func:`psrl.rl.eval_metrics.eval_scores_and_metrics`).
        grid: the PNG grid ``[3, H', W']`` saved as ``samples/step-<step>.png``.
    """

    step: int
    updates: int
    images: Tensor
    members: list[int]
    scores: dict[str, Tensor]
    metrics: dict[str, float]
    grid: Tensor

    def snapshot(self) -> dict:
        """The first member of each eval record: ``{"images": [R, 3, H, W], "scores": {name: [R]}}`` (what
        :func:`first_member_snapshot` samples on its own)."""
        first = torch.tensor([k for k, j in enumerate(self.members) if j == 0])
        return {"images": self.images[first], "scores": {n: s[first] for n, s in self.scores.items()}}


def eval_sampling(cfg):
    """The sampling config of an evaluation: ``sampling`` with the ``eval`` section's steps, size and guidance, no
    SDE noise (ODE samples)."""
    e, s = cfg.eval, cfg.sampling
    return dataclasses.replace(s, num_steps=e.num_steps, height=e.resolution or e.height or s.height,
                               width=e.resolution or e.width or s.width, noise_level=0.0,
                               guidance_scale=e.guidance_scale if e.guidance_scale is not None else s.guidance_scale,
                               train_steps="all_but_last")


@torch.no_grad()
def eval_images(trainer, group_size: int) -> tuple[Tensor, list[tuple[int, int]]]:
    """``group_size`` ODE samples of each eval record with the evaluated weights (the EMA when kept): ``(images
    [R * group_size, 3, H, W] float32 CPU, [(record i, member j)] per image)``."""
    seed = trainer.cfg.eval.seed
    pairs = [(i, j) for i in range(len(trainer.eval_records)) for j in range(group_size)]
    records = [trainer.eval_records[i] for i, _ in pairs]
    gens = [torch.Generator().manual_seed(sample_seed(seed, j, i, salt="eval")) for i, j in pairs]
    trainer.policy.train(False)
    with (trainer.ema.swapped_in() if trainer.ema is not None else nullcontext()), trainer.autocast():
        images = trainer.policy.generate(records, eval_sampling(trainer.cfg), generator=gens)
    return images.float().cpu(), pairs


@torch.no_grad()
def run_evaluation(trainer, step: int) -> Evaluation:
    """Evaluate the current weights at ``step``: ``eval.group_size`` samples per record, the grid saved as
    ``run_dir/samples/step-<step>.png``, the trained and held-out rewards and the image statistics."""
    e = trainer.cfg.eval
    images, pairs = eval_images(trainer, e.group_size)
    grid = image_grid(images, ncols=e.group_size if e.group_size > 1 else None)
    save_image(grid, trainer.run_dir / "samples" / f"step-{step}.png")
    records = [trainer.eval_records[i] for i, _ in pairs]
    metrics, scores = eval_scores_and_metrics(images, records, [i for i, _ in pairs], trained=trainer.rewards,
                                              heldout=trainer.heldout_rewards, statistics=e.statistics,
                                              embed=trainer.eval_embed)
    return Evaluation(step, trainer.updates, images, [j for _, j in pairs], scores, metrics, grid)


@torch.no_grad()
def first_member_snapshot(trainer) -> dict:
    """The first member of each eval record sampled now and scored by the trained and held-out rewards, without an
    evaluation's grid or metrics: ``{"images": [R, 3, H, W], "scores": {name: [R]}}`` (keys as
    :attr:`Evaluation.scores`)."""
    images, _ = eval_images(trainer, 1)
    scores = {r.name: reward_scores(r, images, trainer.eval_records)[0] for r in trainer.rewards}
    scores.update({HELDOUT_PREFIX + r.name: reward_scores(r, images, trainer.eval_records)[0]
                   for r in trainer.heldout_rewards})
    return {"images": images, "scores": scores}


def is_current(trainer, step: int) -> bool:
    """Whether ``trainer.last_eval`` evaluated the current weights at ``step`` (no update since; a ``rollback``
    clears it)."""
    e = trainer.last_eval
    return e is not None and e.step == step and e.updates == trainer.updates


def current_evaluation(trainer, step: int) -> Evaluation:
    """``trainer.last_eval`` when it is current at ``step``, else a new :func:`run_evaluation` kept there."""
    if not is_current(trainer, step):
        trainer.last_eval = run_evaluation(trainer, step)
    return trainer.last_eval


def eval_snapshot(trainer, step: int) -> dict:
    """The first sample of each eval record and its trained-reward scores with the current weights at ``step``
    (main process): ``{"images": [R, 3, H, W], "scores": {name: [R]}}``. It is the trainer's evaluation of ``step``
    when one ran (the final step, usually) or is due (step 0 of a new run with ``eval.at_start``: it runs now and
    the trainer reuses it), so the eval set is sampled once; otherwise :func:`first_member_snapshot`."""
    e = trainer.cfg.eval
    if is_current(trainer, step) or (step == 0 == trainer.start_step and e.every and e.at_start):
        return current_evaluation(trainer, step).snapshot()
    return first_member_snapshot(trainer)


__all__ = ["Evaluation", "current_evaluation", "eval_images", "eval_sampling", "eval_snapshot",
           "first_member_snapshot", "is_current", "run_evaluation"]
