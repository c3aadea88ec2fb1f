"""Every registered reward documents its arguments, score range and NaN policy; ``psrl reward list`` prints them."""
import pytest

from psrl.cli.main import main
from psrl.cli.reward import reward_doc
from psrl.rewards.base import REWARDS


def _problems(name: str) -> list[str]:
    doc = reward_doc(REWARDS.get(name))
    problems = [f"{name}: no {key.replace('_', ' ')}" for key in ("summary", "score_range", "nan_policy")
                if not doc[key]]
    problems += [f"{name}: argument {a['name']!r} missing from the Args: section" for a in doc["args"]
                 if not a["help"]]
    return problems


@pytest.mark.unit
@pytest.mark.parametrize("name", REWARDS.names())
def test_every_registered_reward_documents_args_range_and_nan_policy(name):
    assert _problems(name) == []


@pytest.mark.unit
def test_the_doc_check_catches_an_undocumented_reward():
    class Bare:
        """Scores things.

        Args:
            device: where.
        """

        def __init__(self, device="cpu", *, scale: float = 1.0, **extra):
            pass

    class Child(Bare):
        """A child.

        Score range: [0, 1].
        NaN policy: never.
        """

    doc = reward_doc(Bare)
    assert doc["score_range"] is None and doc["nan_policy"] is None and doc["summary"] == "Scores things."
    assert [(a["name"], a["type"], a["default"], a["help"]) for a in doc["args"]] == [
        ("device", "str", "'cpu'", "where."), ("scale", "float", "1.0", None), ("**extra", "options", None, None)]
    child = reward_doc(Child)  # Args entries are inherited, the range and policy are the class's own
    assert child["score_range"] == "[0, 1]." and child["nan_policy"] == "never." and child["args"][0]["help"]


@pytest.mark.e2e
def test_reward_list_prints_arguments_range_and_nan_policy(capsys):
    assert main(["reward", "list", "mean_color"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "mean_color  (psrl.rewards.simple:MeanColorReward)"
    assert "  score range: [0, 1]." in out and "  NaN policy: a sample whose image has NaN pixels" in out
    assert "    target: tuple[float, float, float] | list[float] = (1.0, 0.0, 0.0)  # the target mean colour" in out
    assert main(["reward", "list", "--names", "dino", "clip_i"]) == 0
    assert capsys.readouterr().out.split() == ["dino", "clip_i"]
    assert main(["reward", "list", "nope"]) != 0
    assert "unknown reward 'nope'" in capsys.readouterr().err
