"""One-to-one matching of a record's subjects to what was found in the image: the optimal assignment (Hungarian
method, Kuhn 1955; ``scipy.optimize.linear_sum_assignment``) of a score matrix, one helper for every reward that
matches subjects (``subject_consistency``'s boxes, the pocket world's detections)."""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def assign(score) -> list[int | None]:
    """For each row of ``score`` (``[n_rows, n_cols]``, any real dtype; higher is better), the column it is
    matched to under the one-to-one assignment maximising the total score, or ``None`` for a row left over when
    there are fewer columns than rows (or no column at all)."""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ValueError(f"score must be a [rows, cols] matrix, got shape {score.shape}")
    out: list[int | None] = [None] * score.shape[0]
    if score.size == 0:
        return out
    rows, cols = linear_sum_assignment(score, maximize=True)
    for r, c in zip(rows, cols):
        out[int(r)] = int(c)
    return out


__all__ = ["assign"]
