"""The repository stands alone: every source a comment, docstring, config or document cites is one a reader can
open (a paper by its arXiv id, an upstream file at a commit, a GitHub issue), never a file that lives outside the
repository (the team's research notes, a design brief, a path on one machine)."""
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "configs", "docs", "benchmarks", "tests")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".txt", ".toml"}

# the notes and briefs the code was written from; none of them is in the repository
_NOTES = ("psr", "paco_flowgrpo", "customized_uno_rewards", "style_and_tiny_models", "tiny_models_more",
          "pocket_world", "design")
UNOPENABLE = [
    re.compile(r"(?<!docs/)\b(%s)\.md\b" % "|".join(_NOTES)),              # a notes file by name (docs/: ours)
    re.compile(r"\b[Rr]esearch (notes?|gotcha)\b|(?<![\w-])research[/:]"),
    re.compile(r"\bgotcha [A-Z]\d+\b"),                                   # a notes item label
    re.compile(r"\.\./shared\b|\bshared/research\b"),                     # a folder beside the checkout
    re.compile(r"(?<![\w.])/work/"),                                      # a path on one machine
]

def scanned_files():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and path.suffix in SUFFIXES and rel != "tests/test_sources.py":
                yield rel, path


def unopenable(text: str) -> list[tuple[int, str]]:
    """``(line number, line)`` of every line that cites something outside the repository."""
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)
            if any(p.search(line) for p in UNOPENABLE)]


def test_every_cited_source_can_be_opened():
    found = [f"{rel}:{n}: {line}" for rel, path in scanned_files()
             for n, line in unopenable(path.read_text(encoding="utf-8", errors="replace"))]
    assert not found, "sources outside the repository (cite the arXiv id or the upstream file at a commit):\n" + \
        "\n".join(found)


@pytest.mark.parametrize("line", [
    "Reproduces the scorer (research/psr.md §3)", "see research notes paco_flowgrpo.md §1.7",
    "(research gotcha O6)", "fails without torchvision (gotcha Q2)", "# Sources: ../shared/research/psr.md",
    "It follows `design.md`", "carry the wheels as `/work/.library/device/README.md` shows",
])
def test_a_notes_reference_is_caught(line):
    assert unopenable(line)


@pytest.mark.parametrize("line", [
    "PSR (arXiv 2512.01236), its frame-wise positional encoding",
    "yifan123/flow_grpo@ac4c86e flow_grpo/stat_tracking.py",
    "detector: {kind: grounding_dino, path: IDEA-Research/grounding-dino-tiny}",
    "estimates of `docs/memory.md`", "write table.md and compare.md",
])
def test_openable_sources_pass(line):
    assert not unopenable(line)
