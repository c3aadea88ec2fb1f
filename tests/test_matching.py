"""The one subject-matching helper (psrl.rewards.matching.assign) against brute force over every one-to-one
assignment and against scipy's linear_sum_assignment total."""
import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from psrl.rewards.matching import assign

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("rows, cols", [(1, 1), (2, 2), (3, 3), (2, 4), (4, 2), (3, 5), (5, 3)])
def test_assign_is_the_best_one_to_one_assignment(rows, cols):
    rng = np.random.default_rng(rows * 10 + cols)
    for _ in range(20):
        score = rng.normal(size=(rows, cols))
        got = assign(score)
        matched = [(r, c) for r, c in enumerate(got) if c is not None]
        assert len(matched) == min(rows, cols) and len({c for _, c in matched}) == len(matched)  # one to one
        total = sum(score[r, c] for r, c in matched)
        k = min(rows, cols)
        best = max(sum(score[r, c] for r, c in zip(rs, cs))
                   for rs in itertools.combinations(range(rows), k) for cs in itertools.permutations(range(cols), k))
        assert total == pytest.approx(best)
        r_, c_ = linear_sum_assignment(score, maximize=True)
        assert total == pytest.approx(score[r_, c_].sum())


def test_assign_edges():
    assert assign(np.zeros((2, 0))) == [None, None] and assign(np.zeros((0, 3))) == []
    assert assign([[0.1, 0.9], [0.8, 0.2], [0.0, 0.0]]) == [1, 0, None]
    with pytest.raises(ValueError, match="matrix"):
        assign([1.0, 2.0])
