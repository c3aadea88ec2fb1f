"""LoRA SFT of a pairwise consistency judge (PaCo-Reward, arXiv 2512.04784) on :class:`psrl.rl.base_trainer.
BaseTrainer`, which owns the accelerator, seeding, AdamW, checkpoints and exact resume, stop signals, tracking and
the loop; this subclass supplies the data, the step and the held-out evaluation.

Start-up (before the run directory exists): read the pairs (:mod:`psrl.reward_model.sharegpt`), load the judge
(:class:`psrl.reward_model.judge_model.PairwiseJudgeModel`), then check every example: both images decode
(:func:`psrl.images.load_image`), the reply's first token is the single token Yes or No, and the example fits
``train.cutoff_len`` (counted with the processor's image-token rule, never truncated). A bad example is named (file,
line, reason): the run stops listing them, or with ``data.skip_invalid`` trains on the rest and writes them to
``skipped_examples.jsonl``.

A step: ``batch_size * gradient_accumulation`` pairs per process, drawn from seeded per-epoch permutations
(identical on every process, each taking its slice, so a resumed run sees the same pairs), the weighted first-token
loss (:func:`psrl.reward_model.loss.first_token_weighted_loss`) averaged over the micro-batches, LoRA gradients
averaged over processes, clipped, one AdamW update under transformers' cosine / linear / constant schedule with
warm-up. ``max_steps`` defaults to ``num_train_epochs`` passes. Metrics: loss, the training batch's first-token
accuracy, grad norm, lr, tokens, and on the held-out pairs (``eval/``) the loss, first-token accuracy (argmax over
the vocabulary, LLaMA-Factory's ``first_token_accuracy``), Yes/No accuracy (P(Yes) > 0.5, what the judge's score
decides) and the mean probability given to the right answer; evaluated before the first step, every
``eval_every`` steps (default: every epoch) and at the end.

:meth:`RewardModelTrainer.export` writes ``adapter/`` (peft; psrl's judge ``adapter_path``) and ``merged/``
(transformers folder; vLLM / sglang, or the judge's ``path``) into the run directory.
"""
from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from psrl.data.records import RecordError
from psrl.errors import PsrlError, listing
from psrl.fileio import atomic_dir
from psrl.images import ImageLoadError, load_image
from psrl.reward_model.encoding import chat_texts, encode_batch, fit_pixels, prepare_image, sequence_length
from psrl.reward_model.judge_model import PairwiseJudgeModel
from psrl.reward_model.loss import first_token_metrics, first_token_weighted_loss
from psrl.reward_model.pairs import PairExample
from psrl.reward_model.reward_model_config import LR_SCHEDULERS, RewardModelRunConfig
from psrl.rl import distributed as dist
from psrl.rl.base_trainer import BaseTrainer

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped_examples.jsonl"


@dataclass(frozen=True)
class Item:
    """A checked example, its two image paths (resolved at load) and its token count."""

    example: PairExample
    paths: tuple[Path, Path]
    tokens: int = 0


def image_sizes(item: Item, cfg) -> tuple[list[tuple[int, int]] | None, str | None]:
    """``(sizes after LLaMA-Factory's pixel limits, None)`` when both images of ``item`` decode, else ``(None,
    reason)``: missing, escaping the data root, unreadable, too small. Thread-safe (no tokenizer)."""
    sizes = []
    for k in range(2):
        try:
            img = load_image(item.paths[k])
        except (ImageLoadError, RecordError) as e:
            return None, f"image {k + 1} ({item.example.images[k]}): {e}"
        sizes.append(fit_pixels(img.width, img.height, cfg.model.image_max_pixels, cfg.model.image_min_pixels))
    return sizes, None


def check_text(item: Item, sizes, processor, cfg, yes_id: int, no_id: int) -> tuple[int, str | None]:
    """``(tokens, None)`` when ``item`` (its images of ``sizes``) can be trained on, else ``(0, reason)``: a reply
    whose first token is not the single token Yes / No of its answer, or a total length over ``cutoff_len``."""
    ex = item.example
    prompt_text, target_text = chat_texts(processor, ex.prompt, ex.response)
    first = processor.tokenizer(target_text, add_special_tokens=False)["input_ids"][:1]
    if first != [yes_id if ex.label == "Yes" else no_id]:
        return 0, f"the reply's first token is not the single token {ex.label!r} (reply {ex.response[:40]!r})"
    total, _ = sequence_length(processor, prompt_text, target_text, sizes)
    if total > cfg.train.cutoff_len:
        return 0, f"is {total} tokens (images included), longer than train.cutoff_len {cfg.train.cutoff_len}"
    return total, None


class RewardModelTrainer(BaseTrainer):
    """Train a pairwise consistency judge's LoRA under ``cfg``.

    Args:
        cfg: the run config.
        model: an already built (loaded or not) :class:`PairwiseJudgeModel` (tests); else built from ``cfg.model``.
        resume: continue from the newest complete checkpoint of ``run.output_dir/run.name``.
        progress: a tqdm bar on the main process.

    Raises:
        ConfigError, RecordError, ModelLoadError, PsrlError: before the run directory exists; invalid examples are
            listed with their file, line and reason.
    """

    name = "reward-model"
    run_prefix = "rm-"

    def __init__(self, cfg: RewardModelRunConfig, *, model: PairwiseJudgeModel | None = None, resume: bool = False,
                 progress: bool = False):
        self.problems: list[str] = []
        self._perms: dict[int, list[int]] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._prefetched: dict[int, Future] = {}
        super().__init__(cfg, cfg.train, policy=model if model is not None else PairwiseJudgeModel(cfg.model),
                         resume=resume, progress=progress)

    # ------------------------------------------------------------------ start-up
    def _read(self, split: str) -> list[Item]:
        from psrl.reward_model.sharegpt import load_examples

        examples, problems = load_examples(self.cfg.data, split)  # image paths come back resolved
        self.problems += problems
        return [Item(e, paths) for e, paths in examples]

    def setup_data(self) -> None:
        self.train_items = self._read("train")
        self.eval_items = self._read("eval")

    def _check_all(self, items: list[Item]) -> list[tuple[int, str | None]]:
        """``(tokens, None)`` or ``(0, problem line)`` per item; images are decoded on ``data.num_workers``
        threads, the text checked on this one (tokenizers are not safe to share between threads)."""
        p = self.policy
        with ThreadPoolExecutor(max_workers=self.cfg.data.num_workers) as pool:
            decoded = list(pool.map(lambda it: image_sizes(it, self.cfg), items))
        out = []
        for it, (sizes, why) in zip(items, decoded):
            n, why = (0, why) if why else check_text(it, sizes, p.processor, self.cfg, p.yes_id, p.no_id)
            out.append((n, f"{it.example.where}: {why}" if why else None))
        return out

    def setup_policy(self) -> None:
        if not self.policy.loaded:
            self.policy.load(self.accelerator.device)
        checked = None
        if self.is_main:  # one process decodes every image; the others receive the verdict
            checked = (self._check_all(self.train_items), self._check_all(self.eval_items))
        on_train, on_eval = dist.broadcast_object(checked)
        self.problems += [why for _, why in on_train + on_eval if why]
        self.train_items = [Item(it.example, it.paths, n) for it, (n, bad) in zip(self.train_items, on_train)
                            if not bad]
        self.eval_items = [Item(it.example, it.paths, n) for it, (n, bad) in zip(self.eval_items, on_eval) if not bad]
        total = len(self.train_items) + len(self.eval_items) + len(self.problems)
        shown = listing(self.problems)
        if self.problems and not self.cfg.data.skip_invalid:
            raise RecordError(f"{len(self.problems)} of {total} example(s) are invalid: {shown}. Fix them, or set "
                              "data.skip_invalid: true to train on the rest")
        if self.problems:
            logger.warning("skipping %d invalid example(s) of %d (data.skip_invalid): %s", len(self.problems), total,
                           shown)
        if not self.train_items:
            raise RecordError(f"data.train: no valid training example (of {total})")
        self._plan_steps()

    def _plan_steps(self) -> None:
        t, n = self.cfg.train, len(self.train_items)
        self.global_batch = t.batch_size * t.gradient_accumulation * self.accelerator.num_processes
        self.steps_per_epoch = math.ceil(n / self.global_batch)
        if t.max_steps == 0:
            t.max_steps = max(1, math.ceil(t.num_train_epochs * n / self.global_batch))  # resolved, saved with runs
        self.warmup_steps = (t.lr_warmup_steps if t.lr_warmup_steps is not None
                             else math.ceil(t.warmup_ratio * t.max_steps))  # TrainingArguments.get_warmup_steps
        self.eval_every = t.eval_every or self.steps_per_epoch

    def setup_training(self) -> None:
        from transformers import get_scheduler

        t = self.cfg.train
        # transformers' schedules (the released recipe's lr_scheduler_type), replacing the base's constant one
        self.scheduler = get_scheduler(LR_SCHEDULERS[t.lr_scheduler], self.optimizer,
                                       num_warmup_steps=self.warmup_steps, num_training_steps=t.max_steps)

    def describe(self) -> str:
        t = self.cfg.train
        return (f"{len(self.train_items)} training pairs ({len(self.problems)} skipped), {len(self.eval_items)} "
                f"held-out; batch {t.batch_size} x accumulation {t.gradient_accumulation} x "
                f"{self.accelerator.num_processes} processes = {self.global_batch} pairs per step, {t.max_steps} "
                f"steps ({t.max_steps / self.steps_per_epoch:.2f} epochs), {self.warmup_steps} warm-up, "
                f"first_token_weight {t.first_token_weight}")

    def extra_state(self) -> dict:
        return {"kind": "reward_model"}

    # ------------------------------------------------------------------ data
    def _indices(self, step: int) -> list[int]:
        """This process's example indices at ``step``: positions ``step*G .. step*G+G-1`` of the stream of seeded
        per-epoch permutations (the same on every process)."""
        n, acc = len(self.train_items), self.accelerator
        per_process = self.cfg.train.batch_size * self.cfg.train.gradient_accumulation
        out = []
        for q in range(step * self.global_batch + acc.process_index * per_process,
                       step * self.global_batch + (acc.process_index + 1) * per_process):
            epoch = q // n
            if epoch not in self._perms:
                gen = torch.Generator().manual_seed(self.cfg.train.seed + 1_000_003 * epoch)
                self._perms[epoch] = torch.randperm(n, generator=gen).tolist()
                self._perms = {e: v for e, v in self._perms.items() if e >= epoch - 1}  # a step spans <= 2 epochs
            out.append(self._perms[epoch][q % n])
        return out

    def _micro_batches(self, step: int) -> list[list[Item]]:
        b, idx = self.cfg.train.batch_size, self._indices(step)
        return [[self.train_items[i] for i in idx[k:k + b]] for k in range(0, len(idx), b)]

    def _load(self, items: list[Item]) -> Future:
        """Encode ``items`` on the loader thread. Every use of the processor after start-up runs on that one
        thread (tokenizers are not safe to share), and the next micro-batch's images are decoded while the
        accelerator works on this one."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-model-loader")
        return self._pool.submit(self._encode, items)

    def _encode(self, items: list[Item]):
        """``items`` -> :class:`psrl.reward_model.encoding.Encoded` on the CPU (images decoded and prepared)."""
        m, proc = self.cfg.model, self.policy.processor
        rows = []
        for it in items:
            ex, images = it.example, []
            for k in range(2):
                try:
                    img = load_image(it.paths[k])
                except (ImageLoadError, RecordError) as e:  # changed since the start-up check
                    raise PsrlError(f"{ex.where}: image {k + 1} can no longer be read ({e})") from e
                images.append(prepare_image(img, m.image_max_pixels, m.image_min_pixels))
            rows.append((images, *chat_texts(proc, ex.prompt, ex.response)))
        return encode_batch(proc, rows)

    def _forward(self, encoded):
        enc = encoded.to(self.accelerator.device, self.policy.dtype)
        with self.autocast():
            logits = self.policy.logits(enc)
        labels = enc.labels[:, enc.lo:enc.hi + 1]
        loss = first_token_weighted_loss(logits, labels, self.cfg.train.first_token_weight)
        return enc, logits, labels, loss

    # ------------------------------------------------------------------ step
    def run_step(self, step: int) -> dict:
        t, p = self.cfg.train, self.policy
        t0 = time.perf_counter()
        batches = self._micro_batches(step)
        pending = self._prefetched.pop(step, None) or self._load(batches[0])
        self._prefetched.clear()
        p.train(True)
        self.optimizer.zero_grad(set_to_none=True)
        sums = torch.zeros(4, dtype=torch.float64)  # loss, first-token correct, rows, tokens
        for k, items in enumerate(batches):
            self.stop_point()
            encoded = pending.result()
            if k + 1 < len(batches):
                pending = self._load(batches[k + 1])
            elif step + 1 < t.max_steps:  # the next step's first micro-batch, while this one trains
                self._prefetched[step + 1] = self._load(self._micro_batches(step + 1)[0])
            enc, logits, labels, loss = self._forward(encoded)
            if not torch.isfinite(loss):
                raise PsrlError(f"reward-model loss is {float(loss)} at step {step} (pairs "
                                f"{[it.example.id for it in items]}); lower train.lr or check the data")
            (loss / t.gradient_accumulation).backward()
            got = first_token_metrics(logits.detach(), labels, p.yes_id, p.no_id)
            sums += torch.tensor([float(loss.detach()), float(got["correct"].sum()), len(items),
                                  float(enc.inputs["attention_mask"].sum())], dtype=torch.float64)
        norm = self.apply_update()
        total = dist.gather_rows(sums[None].to(self.accelerator.device)).cpu().sum(dim=0)
        seconds = time.perf_counter() - t0
        n_proc = self.accelerator.num_processes
        return {"loss": float(total[0]) / (t.gradient_accumulation * n_proc),
                "first_token_accuracy": float(total[1] / total[2]), "grad_norm": norm,
                "lr": self.scheduler.get_last_lr()[0], "tokens": int(total[3]), "time/step": seconds,
                "examples_per_s": float(total[2]) / seconds, "tokens_per_s": float(total[3]) / seconds}

    def step_summary(self, m: dict) -> str:
        held = f"  eval/yes_no_accuracy {m['eval/yes_no_accuracy']:.3f}" if "eval/yes_no_accuracy" in m else ""
        return (f"loss {m['loss']:.4f}  first-token acc {m['first_token_accuracy']:.2f}{held}  grad_norm "
                f"{m['grad_norm']:.3f}  lr {m['lr']:.2e}  ({m['time/step']:.1f}s)")

    def postfix(self, m: dict) -> dict:
        return {"loss": f"{m['loss']:.4f}"}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict:
        """Held-out metrics (``eval/...``) on this process's model; empty without held-out pairs."""
        if not self.eval_items:
            return {}
        p, t = self.policy, self.cfg.train
        was_training = p.module.training
        p.train(False)
        loss_sum, tokens, rows = 0.0, 0, {"correct": [], "yes_no_correct": [], "p_yes": [], "is_yes": []}
        chunks = [self.eval_items[s:s + t.eval_batch_size] for s in range(0, len(self.eval_items), t.eval_batch_size)]
        pending = self._load(chunks[0])
        for k in range(len(chunks)):
            encoded = pending.result()
            if k + 1 < len(chunks):
                pending = self._load(chunks[k + 1])
            enc, logits, labels, loss = self._forward(encoded)
            n = int((labels[:, 1:] != -100).sum())
            loss_sum, tokens = loss_sum + float(loss) * n, tokens + n
            for key, v in first_token_metrics(logits, labels, p.yes_id, p.no_id).items():
                rows[key].append(v.cpu())
        p.train(was_training)
        got = {k: torch.cat(v) for k, v in rows.items()}
        p_right = torch.where(got["is_yes"] > 0, got["p_yes"], 1 - got["p_yes"])
        return {"eval/loss": loss_sum / tokens, "eval/first_token_accuracy": float(got["correct"].mean()),
                "eval/yes_no_accuracy": float(got["yes_no_correct"].mean()),
                "eval/p_correct": float(p_right.mean()), "eval/examples": len(self.eval_items)}

    def train(self) -> list[dict]:
        try:
            return super().train()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            self._prefetched.clear()

    def before_loop(self) -> None:
        if not self.is_main:
            return
        if self.problems:
            from psrl.fileio import write_jsonl_atomic

            write_jsonl_atomic(self.run_dir / SKIPPED_FILE, ({"problem": line} for line in self.problems))
        if self.start_step == 0:
            self.tracker.log({"data/train_examples": len(self.train_items), "data/eval_examples": len(self.eval_items),
                              "data/skipped": len(self.problems), **self.evaluate()}, 0)

    def after_step(self, done: int, metrics: dict) -> None:
        if self.is_main and (done % self.eval_every == 0 or done == self.cfg.train.max_steps):
            metrics.update(self.evaluate())

    # ------------------------------------------------------------------ outputs
    def export(self) -> dict[str, Path]:
        """Write ``adapter/`` (and ``merged/`` when ``train.save_merged``) into the run directory, each through a
        temp folder and a rename; returns their paths. Merging replaces the model in place: call this last."""
        out: dict[str, Path] = {}
        if self.is_main:
            with atomic_dir(self.run_dir / "adapter") as tmp:
                self.policy.save_lora(tmp)
            out["adapter"] = self.run_dir / "adapter"
            if self.cfg.train.save_merged:
                with atomic_dir(self.run_dir / "merged") as tmp:
                    self.policy.save_merged(tmp)
                out["merged"] = self.run_dir / "merged"
        dist.barrier()
        return out


__all__ = ["Item", "RewardModelTrainer", "SKIPPED_FILE", "check_text", "image_sizes"]
