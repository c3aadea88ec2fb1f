"""TRL / diffusers names accepted as aliases of psrl's config keys, in files and ``--set``."""
import pytest

from psrl.config import ALIASES, ConfigError, aliases_of, to_dict
from psrl.rl.run_config import load_run_config


@pytest.mark.unit
def test_trl_names_set_the_psrl_keys_from_set():
    cfg = load_run_config(None, ["train.learning_rate=1e-5", "train.gradient_accumulation_steps=2",
                                 "train.save_total_limit=1", "train.logging_steps=3", "train.save_steps=5",
                                 "train.warmup_steps=7", "train.adam_epsilon=1e-6",
                                 "train.per_device_train_batch_size=2", "train.sample_batch_size=4",
                                 "run.report_to=jsonl"])
    t = cfg.train
    assert (t.lr, t.gradient_accumulation, t.keep_last, t.log_every) == (1e-5, 2, 1, 3)
    assert (t.save_every, t.lr_warmup_steps, t.adam_eps, t.train_batch_size) == (5, 7, 1e-6, 2)
    assert cfg.run.tracker == ["jsonl"]
    dumped = to_dict(cfg)["train"]
    assert "lr" in dumped and "learning_rate" not in dumped  # dumps and checkpoints use the psrl names


@pytest.mark.unit
def test_trl_names_in_a_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {learning_rate: 0.002, save_total_limit: 5}\nrun: {report_to: [jsonl, jsonl]}\n"
                    "rewards: [{name: mean_color}]\ndata: {records: [a red square]}\n")
    cfg = load_run_config(path)
    assert cfg.train.lr == 0.002 and cfg.train.keep_last == 5 and cfg.run.tracker == ["jsonl"]


@pytest.mark.unit
def test_alias_and_psrl_name_together_is_an_error_naming_both(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.learning_rate' is an alias of 'train.lr' and both are set"):
        load_run_config(None, ["train.learning_rate=1e-5", "train.lr=2e-5"])
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 0.1, learning_rate: 0.2}\nrewards: [{name: mean_color}]\ndata: {records: [x]}\n")
    with pytest.raises(ConfigError, match=r"train.learning_rate.*train.lr.*run.yaml"):
        load_run_config(path)


@pytest.mark.unit
def test_set_overrides_the_file_whichever_name_either_uses(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train: {lr: 0.1, save_total_limit: 4}\nrewards: [{name: mean_color}]\ndata: {records: [x]}\n")
    cfg = load_run_config(path, ["train.learning_rate=0.3", "train.keep_last=2"])
    assert cfg.train.lr == 0.3 and cfg.train.keep_last == 2


@pytest.mark.unit
def test_an_alias_applies_only_where_its_key_exists():
    from psrl.rl.sft_config import SFTTrainConfig
    from psrl.config import from_dict

    assert from_dict(SFTTrainConfig, {"per_device_train_batch_size": 4}).batch_size == 4
    with pytest.raises(ConfigError, match="unknown config key 'model.learning_rate'"):
        load_run_config(None, ["model.learning_rate=1e-4"])
    assert aliases_of(type(load_run_config().train))["lr"] == ["learning_rate"]
    assert set(ALIASES) >= {"learning_rate", "gradient_accumulation_steps", "save_total_limit", "report_to"}


@pytest.mark.unit
def test_report_to_takes_one_name_or_several():
    assert load_run_config(None, ["run.report_to=[jsonl, tensorboard, wandb]"]).run.tracker == \
        ["jsonl", "tensorboard", "wandb"]
    assert load_run_config(None, ["run.tracker=tensorboard"]).run.tracker == ["tensorboard"]
    with pytest.raises(ConfigError, match="run.tracker"):
        load_run_config(None, ["run.report_to=[jsonl, mlflow]"])
    with pytest.raises(ConfigError, match="at least one tracker"):
        load_run_config(None, ["run.report_to=[]"])


@pytest.mark.e2e
def test_print_config_names_the_aliases(capsys):
    from psrl.cli.main import main

    assert main(["train", "--print-config", "--set", "train.learning_rate=0.5"]) == 0
    out = capsys.readouterr().out
    lines = {line.split(":")[0].strip(): line for line in out.splitlines()}
    assert lines["lr"].startswith("  lr: 0.5  # AdamW") and "(alias: learning_rate)" in lines["lr"]
    assert "(alias: save_total_limit)" in lines["keep_last"]
    assert "(alias: report_to)" in lines["tracker"]
