"""The reward-model trainer on psrl's tiny Qwen2.5-VL judge: the encoding equals what the judge sees when it scores,
bad examples are named and refused (or skipped and listed), the schedule is transformers', the run resumes exactly,
and the outputs (adapter, merged folder, checkpoint LoRA) load into the ``vlm_consistency`` reward."""
import json
import math

import pytest
import torch
from PIL import Image

from fixtures_reward_model import PROMPT, write_pairs
from psrl.config import from_dict

pytestmark = pytest.mark.component

def make_cfg(tmp_path, train, eval_=None, **train_kw):
    from psrl.reward_model.reward_model_config import RewardModelRunConfig

    t = {"max_steps": 4, "batch_size": 2, "gradient_accumulation": 2, "lr": 1e-3, "device": "cpu", "seed": 0,
         "cutoff_len": 512, "save_merged": False, **train_kw}
    return from_dict(RewardModelRunConfig, {
        "model": {"path": "tiny", "dtype": "float32", "gradient_checkpointing": False, "lora": {"rank": 4}},
        "train": t, "data": {"train": str(train), "eval": str(eval_) if eval_ else None},
        "run": {"output_dir": str(tmp_path / "runs"), "name": "rm"}})


@pytest.fixture
def data(tmp_path):
    return write_pairs(tmp_path, "train", 8), write_pairs(tmp_path, "held", 4, seed=1)


# ---------------------------------------------------------------------------------------------- encoding
def test_fit_pixels_is_llama_factorys_rule():
    from psrl.reward_model.encoding import fit_pixels

    f = math.sqrt(2097152 / (2000 * 1500))
    assert fit_pixels(2000, 1500, 2097152, 1024) == (int(2000 * f), int(1500 * f))
    assert fit_pixels(20, 20, 2097152, 1024) == (32, 32)
    assert fit_pixels(640, 480, 2097152, 1024) == (640, 480)


def test_encoding_is_the_judges_prompt_plus_the_reply():
    """Training sees exactly the token ids the judge scores (LocalTransport), then the reply; only the reply is
    supervised and its first label is the answer token; the length rule matches the processor."""
    from psrl.reward_model.encoding import chat_texts, encode_batch, sequence_length
    from psrl.rewards.tiny import tiny_qwen2_5_vl
    from psrl.rewards.vlm.transports import JudgeRequest, LocalTransport

    _, proc = tiny_qwen2_5_vl()
    imgs = [[Image.new("RGB", (56, 56), "red"), Image.new("RGB", (90, 200), "blue")],
            [Image.new("RGB", (112, 60), "red"), Image.new("RGB", (56, 56), "red")]]
    replies = ["No. One is red.", "Yes. Same."]
    rows = [(im, *chat_texts(proc, PROMPT, r)) for im, r in zip(imgs, replies)]
    enc = encode_batch(proc, rows)
    judge = LocalTransport("tiny")
    tok = proc.tokenizer
    for i, (im, prompt_text, target) in enumerate(rows):
        served = judge._inputs([JudgeRequest(im, PROMPT)])["input_ids"][0].tolist()
        length = int(enc.inputs["attention_mask"][i].sum())
        want = tok(target, add_special_tokens=False)["input_ids"]
        assert enc.inputs["input_ids"][i, :len(served)].tolist() == served
        assert enc.labels[i, :len(served)].eq(-100).all() and enc.labels[i, len(served):length].tolist() == want
        assert want[0] == tok.convert_tokens_to_ids(replies[i][:2] if replies[i][0] == "N" else "Yes")
        assert sequence_length(proc, prompt_text, target, [m.size for m in im]) == (length, len(want))
    assert target.endswith("<|im_end|>\n")
    assert enc.lo == min(int((enc.labels[i] != -100).nonzero()[0]) for i in range(2)) - 1


# ---------------------------------------------------------------------------------------------- refusals
def test_bad_examples_are_named_and_refused_before_any_run_dir(tmp_path, data):
    from psrl.data.records import RecordError
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer

    train, held = data
    lines = train.read_text().splitlines()
    (tmp_path / "broken.png").write_bytes((tmp_path / "train-0a.png").read_bytes()[:50])
    lines[1] = lines[1].replace("train-1a.png", "gone.png")
    lines[2] = lines[2].replace("train-2a.png", "broken.png")
    lines[3] = json.dumps({**json.loads(lines[3]), "label": "Maybe"})
    long = json.loads(lines[4])
    long["response"] = "Yes. " + "very long reason " * 40
    lines[4] = json.dumps(long)
    train.write_text("\n".join(lines) + "\n")
    cfg = make_cfg(tmp_path, train, held, cutoff_len=200)
    with pytest.raises(RecordError) as err:
        RewardModelTrainer(cfg)
    msg = str(err.value)
    assert msg.startswith("4 of 12 example(s) are invalid: ") and "data.skip_invalid" in msg
    assert f"{train}:4: label 'Maybe' is neither Yes nor No" in msg
    assert f"{train}:2: image 1 (gone.png)" in msg and "file not found" in msg
    assert f"{train}:3: image 1 (broken.png)" in msg and "unreadable" in msg
    assert f"{train}:5: is " in msg and "longer than train.cutoff_len 200" in msg
    assert not (tmp_path / "runs").exists()

    cfg = make_cfg(tmp_path, train, held, cutoff_len=200, max_steps=1)
    cfg.data.skip_invalid = True
    trainer = RewardModelTrainer(cfg)
    assert len(trainer.train_items) == 4 and len(trainer.eval_items) == 4
    trainer.train()
    skipped = [json.loads(x)["problem"] for x in (trainer.run_dir / "skipped_examples.jsonl").read_text().splitlines()]
    assert len(skipped) == 4 and any("gone.png" in s for s in skipped)
    first = json.loads((trainer.run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 0 and first["data/skipped"] == 4 and first["data/train_examples"] == 4


def test_a_reply_whose_first_token_is_not_the_answer_token_is_refused(tmp_path, data):
    """The reply must start with the answer word (read time) and that word must be the tokenizer's single Yes / No
    token (check time): a tokenizer that splits "Yes" would teach a first token the judge never reads."""
    from psrl.data.records import RecordError
    from psrl.models.tiny_more import tiny_qwen_vl_processor
    from psrl.reward_model.reward_model_trainer import Item, check_text, image_sizes
    from psrl.reward_model.sharegpt import load_examples
    from psrl.rewards.tiny import tiny_qwen_tokenizer
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer

    train, _ = data
    lines = train.read_text().splitlines()
    lines[1] = json.dumps({**json.loads(lines[1]), "response": "Nope"})
    train.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError, match=rf"{train}:2: the response must start with Yes or No"):
        RewardModelTrainer(make_cfg(tmp_path, train))
    split = tiny_qwen_vl_processor(tiny_qwen_tokenizer(answer_words=()))   # "Yes" is three byte tokens here
    cfg = make_cfg(tmp_path, train)
    item = Item(*load_examples(cfg.data, "train")[0][0])
    sizes, why = image_sizes(item, cfg)
    assert why is None and sizes == [(56, 56), (56, 56)]
    n, why = check_text(item, sizes, split, cfg, yes_id=10**6, no_id=10**6 + 1)
    assert n == 0 and "first token is not the single token 'Yes'" in why


# ---------------------------------------------------------------------------------------------- training
def test_steps_epochs_schedule_and_sample_order(tmp_path, data):
    from transformers import get_cosine_schedule_with_warmup

    from psrl.reward_model.reward_model_trainer import RewardModelTrainer

    train, held = data
    cfg = make_cfg(tmp_path, train, held, max_steps=0, num_train_epochs=2.0, warmup_ratio=0.3)
    trainer = RewardModelTrainer(cfg)
    assert (cfg.train.max_steps, trainer.steps_per_epoch, trainer.warmup_steps) == (4, 2, 2)  # 8 pairs / 4 a step
    epoch0 = trainer._indices(0) + trainer._indices(1)
    assert sorted(epoch0) == list(range(8)) and trainer._indices(0) == RewardModelTrainer(cfg)._indices(0)
    history = trainer.train()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    ref = get_cosine_schedule_with_warmup(opt, 2, 4)
    want = []
    for _ in range(4):
        opt.step()
        ref.step()
        want.append(ref.get_last_lr()[0])
    assert [m["lr"] for m in history] == pytest.approx(want)
    rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r["step"] for r in rows if "eval/yes_no_accuracy" in r]
    assert evals == [0, 2, 4]                        # before training, every epoch, at the end
    assert all(0 <= r["eval/p_correct"] <= 1 for r in rows if "eval/p_correct" in r)
    assert all(m["tokens"] > 0 and m["examples_per_s"] > 0 for m in history)


def test_resume_is_exact(tmp_path, data):
    """A run stopped after step 2 (as a preempted job: checkpoint, exit 143) and resumed ends with the same LoRA
    and the same metrics as an uninterrupted run."""
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer
    from psrl.rl.base_trainer import StepAbandoned
    from psrl.rl.signals import TrainingStopped

    train, held = data
    full = RewardModelTrainer(make_cfg(tmp_path / "a", train, held))
    full.train()
    stopped = RewardModelTrainer(make_cfg(tmp_path / "b", train, held))

    def stop_after_two(done, metrics):
        if done == 2:
            raise StepAbandoned("stopped by SIGTERM", 143)

    stopped.check_health = stop_after_two
    with pytest.raises(TrainingStopped) as err:
        stopped.train()
    assert err.value.exit_code == 143
    resumed = RewardModelTrainer(make_cfg(tmp_path / "b", train, held), resume=True)
    assert resumed.start_step == 2
    resumed.train()
    for (name, p), (_, q) in zip(full.named_params.items(), resumed.named_params.items()):
        assert torch.equal(p, q), name
    rows = lambda t: [json.loads(x) for x in (t.run_dir / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r.get("loss") for r in rows(full)] == [r.get("loss") for r in rows(resumed)]


def test_outputs_load_into_the_vlm_consistency_reward(tmp_path, data):
    """adapter/ and a checkpoint's lora/ are peft adapters psrl's judge loads; merged/ is a transformers folder the
    judge loads as its model; all three score like the trained module itself."""
    from psrl.data.records import Record, SubjectRef, resolve_records
    from psrl.reward_model.encoding import chat_texts, encode_batch
    from psrl.reward_model.reward_model_trainer import RewardModelTrainer
    from psrl.rewards.base import build_reward
    from psrl.images import pil_to_tensor

    train, held = data
    trainer = RewardModelTrainer(make_cfg(tmp_path, train, held, lr=0.05, save_merged=True))
    trainer.train()
    a, b = Image.open(tmp_path / "held-0a.png").convert("RGB"), Image.open(tmp_path / "held-1b.png").convert("RGB")
    enc = encode_batch(trainer.policy.processor, [([a, b], *chat_texts(trainer.policy.processor, PROMPT, "Yes"))])
    with torch.no_grad():
        logits = trainer.policy.logits(enc)[0, 0]
    own = torch.sigmoid(logits[trainer.policy.yes_id] - logits[trainer.policy.no_id]).item()
    paths = trainer.export()
    rec = resolve_records([Record(id="r", prompt="theme", subjects=(SubjectRef(image="held-0a.png", phrase="a"),))],
                          tmp_path)[0]
    image = pil_to_tensor(b)[None]
    scores = {}
    for name, args in {"adapter": {"path": "tiny", "adapter_path": str(paths["adapter"])},
                       "checkpoint": {"path": "tiny", "adapter_path": str(trainer.run_dir / "checkpoints" / "step-4" /
                                                                          "lora")},
                       "merged": {"path": str(paths["merged"])}, "base": {"path": "tiny"}}.items():
        reward = build_reward("vlm_consistency", {**args, "template": PROMPT})
        scores[name] = reward(image, [rec]).scores.item()
    assert scores["adapter"] == pytest.approx(own, abs=1e-5)
    assert scores["checkpoint"] == pytest.approx(own, abs=1e-5) and scores["merged"] == pytest.approx(own, abs=1e-5)
    assert abs(scores["base"] - own) > 1e-4          # the LoRA changed the judge
    cfg_json = json.loads((paths["merged"] / "processor_config.json").read_text())
    assert cfg_json["processor_class"] == "Qwen2_5_VLProcessor"   # a name vLLM and AutoProcessor know
