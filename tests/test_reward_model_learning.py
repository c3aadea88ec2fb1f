"""A tiny Qwen2.5-VL judge learns a pairwise task with PaCo's recipe (LoRA, weighted first-token loss, alpha 0.1):
"do the two images have the same dominant colour?". Its held-out first-token (Yes/No) accuracy rises from chance,
and the trained adapter, loaded by the ``vlm_consistency`` reward, orders held-out pairs (Yes pairs above No pairs)
far better than the untrained judge."""
import json

import numpy as np
import pytest
import torch

from psrl.config import from_dict
from fixtures_reward_model import PROMPT, write_pairs

pytestmark = pytest.mark.component


def _auc(pos, neg):
    return float(np.mean([p > n for p in pos for n in neg]))


def test_tiny_judge_learns_same_colour_and_scores_through_vlm_consistency(tmp_path):
    from psrl.data.records import Record, SubjectRef, resolve_records
    from psrl.reward_model.reward_model_config import RewardModelRunConfig
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer
    from psrl.reward_model.tiny import save_tiny_judge
    from psrl.rewards.base import build_reward
    from psrl.images import pil_to_tensor
    from PIL import Image

    base = save_tiny_judge(tmp_path / "judge")     # loaded with from_pretrained, as a real checkpoint
    train = write_pairs(tmp_path, "train", 256, seed=0)
    held = write_pairs(tmp_path, "held", 64, seed=1)
    cfg = from_dict(RewardModelRunConfig, {
        "model": {"path": str(base), "dtype": "float32", "gradient_checkpointing": False, "lora": {"rank": 8}},
        "train": {"max_steps": 120, "batch_size": 8, "gradient_accumulation": 1, "lr": 5e-3, "eval_every": 40,
                  "device": "cpu", "seed": 2, "cutoff_len": 256, "save_merged": False},
        "data": {"train": str(train), "eval": str(held)},
        "run": {"output_dir": str(tmp_path / "runs"), "name": "learn"}})
    assert cfg.train.first_token_weight == 0.1 and cfg.train.lr_scheduler == "cosine"   # the recipe's loss
    trainer = RewardModelTrainer(cfg)
    trainer.train()
    adapter = trainer.export()["adapter"]
    rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    acc = {r["step"]: r["eval/yes_no_accuracy"] for r in rows if "eval/yes_no_accuracy" in r}
    assert set(acc) == {0, 40, 80, 120}
    assert acc[0] <= 0.6 and acc[120] >= 0.75, acc        # chance (balanced held-out set) -> clearly above

    pairs = [json.loads(x) for x in held.read_text().splitlines()]
    images = torch.stack([pil_to_tensor(Image.open(tmp_path / p["images"][1]).convert("RGB")) for p in pairs])
    records = resolve_records([Record(id=p["id"], prompt="colours", subjects=(SubjectRef(image=p["images"][0],
                                                                                         phrase="a"),))
                               for p in pairs], tmp_path)
    is_yes = [p["response"].startswith("Yes") for p in pairs]
    auc = {}
    for name, extra in {"untrained": {}, "trained": {"adapter_path": str(adapter)}}.items():
        reward = build_reward("vlm_consistency", {"path": str(base),
                                                  "template": PROMPT, "batch_size": 16, **extra})
        out = reward(images, records)
        assert torch.isfinite(out.scores).all()
        s = out.scores.tolist()
        auc[name] = _auc([x for x, y in zip(s, is_yes) if y], [x for x, y in zip(s, is_yes) if not y])
    assert auc["trained"] >= 0.8 and auc["trained"] >= auc["untrained"] + 0.2, auc
