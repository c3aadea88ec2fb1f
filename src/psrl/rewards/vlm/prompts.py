"""Judge prompts and the rubric score parser.

PSRBench rubric prompts (wang-shulei/PSR@c719168 ``eval/semantic-alignment/*-alignment.py``): sent as Python triple-quoted strings, so the text starts with a
newline, every line is indented by 8 spaces and it ends with a newline and the 8 spaces before the closing quotes;
"{}" receives the full instruction. Trailing spaces inside lines are kept as published. Complex, Three and
Four share one prompt. Checked character for character against wang-shulei/PSR (commit 154df4e,
``eval/semantic-alignment/*-alignment.py``); tests/test_rewards_vlm.py pins their SHA-256. PaCo-Reward prompts:
X-GenGroup/PaCo-RL@08caac6 ``PaCo-GRPO/paco_grpo/rewards/consistency_scorer.py`` (template version 1) and
``consistency_for_editing.py``.
"""
from __future__ import annotations

import math
import re

_ATTRIBUTE_LINES = (
    'Your role is to evaluate whether the attributes of objects and attribute description in the image are consistent.',
    'Rule1: The score range is 0-10, where 10 indicates that all attributes of each object are completely consistent with the attribute description.',
    'A lower score indicates low consistency.',
    'Rule2: You only need to focus on the degree of matching between the attributes of subjects of image and the attribute description.',
    'Rule3: The criteria for judging attributes should be relatively stringent.',
    'Rule4: Please first provide a detailed analysis of the evaluation process, including the criteria for judging attribute alignment, then give a final',
    'Score from 0 to 10. The output text must follow the format [Thought]: … [Score]: …',
    '[attribute description]: {}',
    '[Thought]:',
    '[Score]:',
)

_ACTION_LINES = (
    'Your role is to evaluate whether the action of the objects in the image match the given action descriptions.',
    'Rule1: The score range is 0-10, where 10 indicates a perfect match between the action in the image and the action description, with higher ',
    'scores indicating a better match, and 0 indicating no match at all.',
    'Rule2: You only need to focus on the degree of matching between the action in the image and the action description.',
    'Rule3: The criteria for judging action should be relatively stringent.',
    'Rule4: Please first provide a detailed analysis of the evaluation process, including the criteria for judging action alignment, then give a final',
    'Score from 0 to 10. The output text must follow the format [Thought]: … [Score]: …',
    '[action description]: {}',
    '[Thought]:',
    '[Score]:',
)

_BACKGROUND_LINES = (
    'Your role is to evaluate whether the background in the image and background description are consistent.',
    'Rule1: The score range is 0-10, where 10 indicates a perfect match between the background in the image and the background description, with higher scores indicating a better match, and 0 indicating no match at all.',
    'Rule2: You only need to focus on the degree of matching between the background in the image and the background description.',
    'Rule3: The criteria for judging background should be relatively stringent.',
    'Rule4: Please first provide a detailed analysis of the evaluation process, including the criteria for judging background alignment, then give a final',
    'Score from 0 to 10. The output text must follow the format [Thought]: … [Score]: …',
    '[background description]: {}',
    '[Thought]:',
    '[Score]:',
)

_COMPLEX_LINES = (
    'Your role is to evaluate whether the content in the image match the description in the prompt.',
    'Rule1: The score range is 0-10, where 10 indicates that the content in the image is completely consistent with the description, and lower scores indicate low consistency. ',
    'Rule2: You need to evaluate the alignment of all content in the image and the prompt.',
    'Rule3: The criteria for judging alignment should be relatively stringent.',
    'Rule4: Please first provide a detailed analysis of the evaluation process, including the criteria for judging alignment, then give a final',
    'Score from 0 to 10. The output text must follow the format [Thought]: … [Score]: …',
    '[description]: {}',
    '[Thought]:',
    '[Score]:',
)


def _psrbench(lines: tuple[str, ...]) -> str:
    return "\n" + "\n".join(" " * 8 + line for line in lines) + "\n" + " " * 8


RUBRIC_PROMPTS = {
    "attribute": _psrbench(_ATTRIBUTE_LINES),
    "action": _psrbench(_ACTION_LINES),
    "background": _psrbench(_BACKGROUND_LINES),
    "complex": _psrbench(_COMPLEX_LINES),
}
RUBRIC_PROMPTS["three"] = RUBRIC_PROMPTS["four"] = RUBRIC_PROMPTS["complex"]

# the PSRBench scorer's regex (wang-shulei/PSR @ 154df4e); the first match is the score
SCORE_RE = re.compile(r"\[Score\]:\s*([\d.]+)")
# what real judges write around it: markdown emphasis (``**[Score]:** 8``, ``[Score]: **8**``), any case, spaces
# before the colon, a full-width colon or brackets (``[Score]：8``, ``【Score】: 8``); the number must end there
# ("7.5.1" is not a score), "8." at the end of a sentence is 8
TOLERANT_SCORE_RE = re.compile(r"[\[【]\s*score\s*[\]】][\s*_`]*[:：][\s*_`]*(\d+(?:\.\d+)?)(?!\.?\d)",
                               re.IGNORECASE)
RUBRIC_PARSERS = {"tolerant": TOLERANT_SCORE_RE, "strict": SCORE_RE}


def rubric_prompt(subset: str | None, instruction: str, default_subset: str = "complex") -> tuple[str, str]:
    """``(prompt, subset used)``; subset names are case-insensitive (``tags["subset"]`` of PSRBench records)."""
    key = (subset or default_subset).strip().lower()
    if key not in RUBRIC_PROMPTS:
        key = default_subset
    return RUBRIC_PROMPTS[key].format(instruction), key


def parse_rubric_score(text: str, max_score: float = 10.0, parser: str = "tolerant") -> float | None:
    """The score of a rubric reply: the first match of the parser's pattern in ``text``, which must be a number in
    [0, max_score]; ``None`` otherwise (the PSRBench scorer substitutes 5 here; we never invent a value).

    ``parser``: ``"tolerant"`` (default; :data:`TOLERANT_SCORE_RE`: markdown emphasis, any case, spaces, full-width
    colon) or ``"strict"`` (the released regex :data:`SCORE_RE`, for ``psrbench_compat``: ``**[Score]:** 8`` is
    then unparsable, as it is for the released scorer)."""
    if parser not in RUBRIC_PARSERS:
        raise ValueError(f"rubric parser must be one of {sorted(RUBRIC_PARSERS)}, got {parser!r}")
    m = RUBRIC_PARSERS[parser].search(text or "")
    if not m:
        return None
    raw = m.group(1).rstrip(".") if m.group(1).count(".") > 1 or m.group(1).endswith(".") else m.group(1)
    try:
        value = float(raw)
    except ValueError:
        return None
    if not math.isfinite(value) or not 0.0 <= value <= max_score:
        return None
    return value


# ---------------------------------------------------------------------------------------------- PaCo-Reward
PACO_TEMPLATES = {
    # template v1, used in PaCo-GRPO training (T2IS); {theme} is the main prompt
    "v1": 'Given two subfigures generated based on the theme: "{theme}", do the two images maintain consistency in '
          'terms of style, logic and identity? Answer "Yes" and "No" first, and then provide detailed reasons.',
    # template v3, the ConsistencyRank evaluation default (no theme)
    "v3": 'Do the two images maintain consistency in terms of style, logic and identity? Answer "Yes" and "No" '
          'first, and then provide detailed reasons.',
}
EDIT_CONSISTENCY_PROMPT = (
    "Compare the edited image (second) with the original image (first). Instruction: '{instruction}'. Except for "
    "the parts that are intentionally changed according to the instruction, does the edited image remain "
    "consistent with the original in style, logic, and identity? Answer 'Yes' or 'No' first, then provide "
    "detailed reasons.")
EDIT_FOLLOW_PROMPT = (
    "Compare the edited image (second) with the original image (first). Instruction: '{instruction}'. Does the "
    "edited image accurately follow this instruction? Answer 'Yes' or 'No' first, then provide detailed reasons.")


def paco_prompt(template: str, theme: str) -> str:
    """A named PaCo template (``v1``, ``v3``) or a custom string with an optional ``{theme}`` slot."""
    text = PACO_TEMPLATES.get(template, template)
    return text.replace("{theme}", theme)
