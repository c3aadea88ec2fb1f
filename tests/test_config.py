"""Run config: embedded default, unknown keys and bad values named, --set overrides, derived sizes."""
from pathlib import Path

import pytest

from psrl.cli.main import main
from psrl.config import ConfigError, to_dict
from psrl.rl.grpo_config import TrainConfig
from psrl.rl.run_config import RunConfig, derive_sizes, load_run_config

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny_flux.yaml")  # the tiny random FLUX run


@pytest.mark.unit
def test_embedded_default_loads_and_round_trips():
    cfg = load_run_config()
    assert isinstance(cfg, RunConfig)
    assert cfg.model.path == "tiny" and cfg.rewards[0].name == "mean_color"
    assert cfg.train.max_steps >= 2 and cfg.advantage.mode == "weighted"
    from psrl.config import from_dict

    assert to_dict(from_dict(RunConfig, to_dict(cfg))) == to_dict(cfg)


@pytest.mark.unit
def test_overrides_apply():
    cfg = load_run_config(None, ["train.lr=1e-5", "rewards.0.weight=2", "advantage.std_mode=global",
                                 "sampling.num_steps=6", "run.name=abc"])
    assert cfg.train.lr == 1e-5 and cfg.rewards[0].weight == 2.0
    assert cfg.advantage.std_mode == "global" and cfg.sampling.num_steps == 6 and cfg.run.name == "abc"


@pytest.mark.unit
@pytest.mark.parametrize("override, expected", [
    ("train.lrr=1", "train.lrr"),
    ("advantage.foo=1", "advantage.foo"),
    ("rewards.0.wieght=1", "rewards.0.wieght"),
])
def test_unknown_key_is_named(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        load_run_config(None, [override])


@pytest.mark.unit
@pytest.mark.parametrize("override, words", [
    ("train.lr=abc", ["train.lr", "abc"]),
    ("train.group_size=0", ["group_size", "0"]),
    ("advantage.std_mode=median", ["std_mode", "median"]),
    ("train.mixed_precision=fp8", ["mixed_precision", "fp8"]),
    ("run.tracker=mlflow", ["tracker", "mlflow"]),
    ("sampling.sde_kind=ode", ["sde_kind", "ode"]),
    ("train.train_batch_size=3", ["train_batch_size", "3"]),
])
def test_bad_value_is_named(override, words):
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [override])
    for w in words:
        assert w in str(err.value)


# alike on purpose: tests/test_reward_model_cli.py checks its own required keys the same way
@pytest.mark.unit
def test_missing_rewards_and_data_are_errors(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {records: [a cat]}\n")
    with pytest.raises(ConfigError, match="reward"):
        load_run_config(path)
    path.write_text("rewards: [{name: mean_color}]\n")
    with pytest.raises(ConfigError, match="data.records"):
        load_run_config(path)


@pytest.mark.unit
def test_relative_records_resolve_against_the_config_file(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"id": "a", "prompt": "a cat"}\n')
    path = tmp_path / "c.yaml"
    path.write_text("rewards: [{name: mean_color}]\ndata: {records: prompts.jsonl}\n")
    cfg = load_run_config(path)
    assert cfg.data.records == str(tmp_path / "prompts.jsonl")


@pytest.mark.unit
def test_derived_sizes_and_divisibility_errors():
    t = TrainConfig(groups_per_step=4, group_size=6, sample_batch_size=6, train_batch_size=3, gradient_accumulation=2,
                    num_inner_epochs=2)
    s = derive_sizes(t, num_processes=2)
    assert (s.images_per_step, s.images_per_process, s.rollout_batches, s.micro_batches) == (24, 12, 2, 4)
    assert s.updates_per_step == 4  # 4 micro-batches / 2 accumulation x 2 inner epochs
    assert "24 images per step" in s.describe()
    with pytest.raises(ConfigError, match="groups_per_step.*group_size.*5 processes"):
        derive_sizes(t, num_processes=5)
    with pytest.raises(ConfigError, match="sample_batch_size=5"):
        derive_sizes(TrainConfig(groups_per_step=2, group_size=4, sample_batch_size=5, train_batch_size=5), 1)
    with pytest.raises(ConfigError, match="gradient_accumulation=3"):
        derive_sizes(TrainConfig(groups_per_step=2, group_size=4, sample_batch_size=4, train_batch_size=4,
                                 gradient_accumulation=3), 1)


@pytest.mark.e2e
def test_cli_reports_config_errors(capsys):
    assert main(["train", "--set", "train.lrr=1"]) == 2
    assert "error: unknown config key 'train.lrr'" in capsys.readouterr().err
    assert main(["train", "--config", "/nonexistent/x.yaml"]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["train", "--set", "advantage.mode=nope", "--set", "run.output_dir=/tmp/never-created"]) == 2
    assert "advantage.mode" in capsys.readouterr().err


@pytest.mark.e2e
def test_print_config(capsys):
    assert main(["train", "--print-config", "--set", "train.lr=0.5"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.5" in out and "mean_color" in out


@pytest.mark.unit
def test_shipped_configs():
    from pathlib import Path

    from psrl.rl.run_config import default_config_text

    root = Path(__file__).resolve().parents[1]
    assert (root / "configs" / "tiny_flux.yaml").read_text() == default_config_text()  # the copy stays in sync
    cfg = load_run_config(root / "configs" / "flux_grpo.yaml")
    assert cfg.model.path == "black-forest-labs/FLUX.1-dev" and cfg.sampling.noise_level == 0.9
    s = derive_sizes(cfg.train, 8)
    assert (s.images_per_step, s.updates_per_step) == (48 * 24, 2)


@pytest.mark.unit
def test_enum_fields_are_literals_and_keep_the_registries_in_step():
    import typing

    from psrl.rl.grpo_config import TrainConfig
    from psrl.rl.optim import OPTIMIZERS
    from psrl.rl.sft_config import SFTTrainConfig

    hints = typing.get_type_hints(TrainConfig)
    assert set(typing.get_args(hints["optimizer"])) == set(OPTIMIZERS)
    assert set(typing.get_args(typing.get_type_hints(SFTTrainConfig)["optimizer"])) == set(OPTIMIZERS)


@pytest.mark.unit
def test_literal_errors_name_the_choices_and_yaml_no_is_no():
    from psrl.config import ConfigError
    from psrl.rl.run_config import load_run_config

    with pytest.raises(ConfigError, match=r"'sampling.sde_kind': 'ode'; expected one of 'sde', 'cps'"):
        load_run_config(None, ["sampling.sde_kind=ode"])
    assert load_run_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # YAML reads False


@pytest.mark.e2e
def test_print_config_shows_help_beside_each_value(capsys):
    from psrl.cli.main import main

    assert main(["train", "--config", TINY, "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  lr: 0.03  # AdamW" in out
    assert "  group_size: 4  # G, images per prompt" in out
    assert "  skip_invalid: false  # train on the valid records" in out
    import yaml

    assert yaml.safe_load(out)["train"]["lr"] == 0.03  # still valid YAML


@pytest.mark.unit
def test_set_gives_string_fields_the_text_as_typed():
    from psrl.rl.run_config import load_run_config

    cfg = load_run_config(None, ["model.path=0123", "run.name=007", "data.records=[a, b]"])
    assert cfg.model.path == "0123" and cfg.run.name == "007"  # not YAML's 83 and 7
    assert cfg.data.records == ["a", "b"]  # a list where the field takes one


@pytest.mark.unit
def test_set_secret_values_are_never_echoed():
    from psrl.rl.run_config import load_run_config

    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["rewards.0.args.api_key=hunter2", "train.lr=oops"])
    assert "hunter2" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        load_run_config(None, ["run.api_token=hunter2"])
    assert "hunter2" not in str(info.value) and "api_token=***" in str(info.value)


@pytest.mark.unit
def test_trainer_sections_share_training_config_and_every_key_has_help():
    from psrl.config import field_help
    from psrl.reward_model.reward_model_config import RewardModelConfig
    from psrl.rl.grpo_config import TrainConfig
    from psrl.rl.sft_config import SFTTrainConfig
    from psrl.rl.training_config import TrainingConfig

    for cls in (TrainConfig, SFTTrainConfig, RewardModelConfig):
        assert issubclass(cls, TrainingConfig)
        helps = field_help(cls)
        assert all(helps.values()), [k for k, v in helps.items() if not v]
    # a stage's own entry replaces the base's; the base's reach the stages that do not re-document them
    assert field_help(RewardModelConfig)["lr_warmup_steps"].startswith("warm-up steps; set, it replaces")
    assert field_help(SFTTrainConfig)["keep_last"] == field_help(TrainingConfig)["keep_last"]
    # stage defaults, and one range check naming each stage's section
    assert (TrainConfig().lr, SFTTrainConfig().lr, RewardModelConfig().lr) == (3e-4, 1e-4, 2e-4)
    with pytest.raises(ValueError, match=r"^sft\.betas must be in \[0, 1\), got \[0\.9, 1\.5\]"):
        SFTTrainConfig(betas=(0.9, 1.5))
    with pytest.raises(ValueError, match=r"^train\.max_grad_norm must be >= 0, got -1"):
        RewardModelConfig(max_grad_norm=-1)
