"""psrl.config.check_range: the one range check of config ``__post_init__`` methods, and the one-line error a user
sees through from_dict (file, field and value)."""
from dataclasses import dataclass

import pytest

from psrl.config import ConfigError, check_range, from_dict

pytestmark = pytest.mark.unit


@dataclass
class _Cfg:
    n: int = 1
    p: float = 0.5
    lr: float = 1e-4
    opt: int | None = None

    def __post_init__(self):
        check_range(self, "n", 1, section="train")
        check_range(self, "p", 0, 1, hi_open=True, section="train")
        check_range(self, "lr", 0, lo_open=True)
        check_range(self, "opt", hi=3)


@pytest.mark.parametrize("data, message", [
    ({"n": 0}, "train.n must be >= 1, got 0"),
    ({"p": 1.0}, r"train.p must be in \[0, 1\), got 1.0"),
    ({"p": -0.1}, r"train.p must be in \[0, 1\), got -0.1"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"opt": 4}, "opt must be <= 3, got 4"),
])
def test_out_of_range_values_are_one_line_errors_naming_field_and_value(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(_Cfg, data, source="run.yaml")


def test_in_range_and_unset_values_pass():
    cfg = from_dict(_Cfg, {"n": 1, "p": 0.0, "lr": 1.0, "opt": None})
    assert (cfg.n, cfg.p, cfg.opt) == (1, 0.0, None)
    check_range(cfg, "p", 0, 0, section="x")  # closed bounds include the ends
    with pytest.raises(ValueError, match=r"^x.p must be in \(0, 1\], got 0.0$"):
        check_range(cfg, "p", 0, 1, lo_open=True, section="x")
