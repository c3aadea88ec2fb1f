"""Renamed config keys: the data pipeline's endpoint keys now agree with the pair stages' teacher (timeout,
max_new_tokens, max_concurrency); the old names, written in every earlier dataset's config.yaml and in shipped
configs, still load with a warning naming the file, and both names at once is an error."""
import logging

import pytest

from psrl.config import ConfigError, from_dict, load_config
from psrl.datagen.config import DataPipelineConfig, EndpointConfig
from psrl.reward_model.pair_stages import TeacherConfig

pytestmark = pytest.mark.unit

ENDPOINT_KEYS = ("url", "model", "api_key_env", "timeout", "retries", "temperature", "max_new_tokens",
                 "max_concurrency")


def test_endpoint_and_teacher_share_the_endpoint_key_names():
    from dataclasses import fields

    teacher = {f.name for f in fields(TeacherConfig)}
    assert [f.name for f in fields(EndpointConfig)] == list(ENDPOINT_KEYS)
    assert set(ENDPOINT_KEYS) <= teacher


def test_old_endpoint_keys_load_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "config.yaml"
    path.write_text("prompts:\n  llm:\n    timeout_s: 5\n    max_tokens: 64\n    concurrency: 16\n")
    with caplog.at_level(logging.WARNING, logger="psrl.config"):
        cfg = load_config(DataPipelineConfig, path)
    assert (cfg.prompts.llm.timeout, cfg.prompts.llm.max_new_tokens, cfg.prompts.llm.max_concurrency) == (5, 64, 16)
    text = caplog.text
    assert f"'prompts.llm.concurrency' (in {path}) is deprecated; rename it 'prompts.llm.max_concurrency'" in text
    assert "'prompts.llm.timeout_s'" in text and "'prompts.llm.max_tokens'" in text


def test_old_and_new_name_together_is_an_error():
    with pytest.raises(ConfigError, match=r"'llm.concurrency' is an alias of 'llm.max_concurrency' and both are "
                                          r"set \(in run.yaml\); keep one"):
        from_dict(EndpointConfig, {"concurrency": 2, "max_concurrency": 3}, prefix="llm", source="run.yaml")


def test_new_names_load_without_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="psrl.config"):
        cfg = from_dict(EndpointConfig, {"timeout": 1.5, "max_concurrency": 2})
    assert (cfg.timeout, cfg.max_concurrency) == (1.5, 2) and not caplog.records
