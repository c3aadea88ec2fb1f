"""Shared data of the reward-model tests: pairs of noisy solid-colour images ("same dominant colour?")."""
import json

import numpy as np
from PIL import Image

PROMPT = "Do the two images have the same dominant colour?"
COLORS = [(220, 30, 30), (30, 40, 220)]


def write_pairs(root, name, n, seed=0, size=56, offset=0):
    """``n`` pairs of noisy solid-colour images; pair i is a Yes pair when i is even."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        a = int(rng.integers(2))
        b = a if i % 2 == 0 else 1 - a
        names = []
        for k, c in (("a", a), ("b", b)):
            arr = np.array(COLORS[c], dtype=np.float32)[None, None] + rng.normal(0, 12, (size, size, 3))
            fname = f"{name}-{offset + i}{k}.png"
            Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(root / fname)
            names.append(fname)
        reply = "Yes. Same colour." if a == b else "No. Different colours."
        lines.append(json.dumps({"id": f"{name}{offset + i}", "images": names, "prompt": PROMPT, "response": reply}))
    path = root / f"{name}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path
