"""Pairwise examples in the ShareGPT-style JSON of LLaMA-Factory, the format of the released PaCo-Dataset.

An item (LLaMA-Factory ``data/README.md``, "sharegpt" multimodal format; the ``mllm_demo`` entry of
``data/dataset_info.json`` at X-GenGroup/PaCo-RL@08caac6 ``PaCo-Reward/LLaMA-Factory/``)::

    {"messages": [{"role": "user", "content": "<image><image>Do the two images ...?"},
                  {"role": "assistant", "content": "Yes. ..."}],
     "images": ["images/a.png", "images/b.png"]}

``conversations`` with ``from`` / ``value`` (``human`` / ``gpt``) is read too. Image paths are relative to the JSON
file's folder (LLaMA-Factory's ``dataset_dir``). A pairwise example is one user turn holding exactly two ``<image>``
placeholders, with two images, and one assistant reply starting with Yes or No; the placeholders are dropped from
the text and the images are shown before it (how psrl's judge and PaCo's scorer send them). Anything else (several
turns, a system prompt the judge would not send at scoring time, a reply that is not Yes/No first, absolute image
paths) is a problem naming the file and the item.
"""
from __future__ import annotations

import json
from pathlib import Path

from psrl.data.records import RecordError, records_root
from psrl.fileio import jsonl_lines
from psrl.reward_model.pairs import PairExample, answer_of, keep_unique, not_json, read_pairs, resolve_examples

IMAGE_PLACEHOLDER = "<image>"
_ROLE_KEYS = (("messages", "role", "content", "user", "assistant"), ("conversations", "from", "value", "human", "gpt"))


def _load_items(path: Path) -> tuple[list[tuple[str, object]], list[str]]:
    """``[(where, item)]`` from a JSON array, or from JSONL (one item per line)."""
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if isinstance(data, list):
        return [(f"{path}: item {i}", item) for i, item in enumerate(data)], []
    if isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON array of items (or JSONL), got one object")
    items, problems = [], []
    for where, value in jsonl_lines(path, text):
        if problem := not_json(where, value):
            problems.append(problem)
        else:
            items.append((where, value))
    return items, problems


def example_from_sharegpt(item, where: str, index: int, stem: str = "item") -> tuple[PairExample | None, str | None]:
    """One ShareGPT item -> ``(example, None)`` or ``(None, problem)``; the id is the item's ``id``, else
    ``<stem>-<index>`` (the file's stem, so two files' items never share an id)."""
    if not isinstance(item, dict):
        return None, f"{where}: expected a JSON object, got {type(item).__name__}"
    for key, role_k, content_k, user, assistant in _ROLE_KEYS:
        if key in item:
            turns = item[key]
            break
    else:
        return None, f"{where}: no 'messages' or 'conversations' list"
    if isinstance(item.get("system"), str) and item["system"].strip():
        return None, f"{where}: has a system prompt; psrl's judge sends none when it scores"
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        return None, f"{where}: '{key}' must be a list of objects"
    roles = [t.get(role_k) for t in turns]
    if roles != [user, assistant]:
        return None, (f"{where}: a pairwise example is one {user!r} turn then one {assistant!r} reply, got roles "
                      f"{roles}")
    question, reply = turns[0].get(content_k), turns[1].get(content_k)
    if not isinstance(question, str) or not isinstance(reply, str):
        return None, f"{where}: turn contents must be strings"
    images = item.get("images")
    if question.count(IMAGE_PLACEHOLDER) != 2 or not isinstance(images, list) or len(images) != 2:
        n = len(images) if isinstance(images, list) else images
        return None, (f"{where}: needs exactly 2 {IMAGE_PLACEHOLDER} placeholders and 2 images, got "
                      f"{question.count(IMAGE_PLACEHOLDER)} and {n}")
    if not all(isinstance(p, str) and p and not Path(p).is_absolute() for p in images):
        return None, f"{where}: image paths must be relative to the JSON file's folder, got {images}"
    reply = reply.strip()
    if answer_of(reply) is None:
        return None, f"{where}: the reply must start with Yes or No, got {reply[:60]!r}"
    prompt = question.replace(IMAGE_PLACEHOLDER, "").strip()
    if not prompt:
        return None, f"{where}: the user turn has no text besides the images"
    rid = item.get("id")
    rid = rid if isinstance(rid, str) and rid.strip() else f"{stem}-{index}"
    return PairExample(id=rid, images=(images[0], images[1]), prompt=prompt, response=reply, group=rid,
                       where=where), None


def read_sharegpt(path: str | Path) -> tuple[list[PairExample], list[str]]:
    """Read a ShareGPT-style JSON (array or JSONL) of pairwise examples: ``(examples, problems)``.

    Raises:
        RecordError: the file is missing or is a single JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"ShareGPT file not found: {path}")
    items, problems = _load_items(path)
    out = keep_unique(((where, *example_from_sharegpt(item, where, index, path.stem))
                       for index, (where, item) in enumerate(items)), problems)
    return out, problems


def write_sharegpt(examples, path: str | Path) -> Path:
    """Write examples as a ShareGPT JSON array (LLaMA-Factory ``formatting: sharegpt``, ``columns: {messages,
    images}``; each item's images before its text, as it is trained and scored), atomically."""
    from psrl.fileio import write_text_atomic

    items = [{"id": e.id, "messages": [{"role": "user", "content": IMAGE_PLACEHOLDER * 2 + e.prompt},
                                       {"role": "assistant", "content": e.response}], "images": list(e.images)}
             for e in examples]
    return write_text_atomic(path, json.dumps(items, ensure_ascii=False, indent=1))


def load_examples(data, split: str) -> tuple[list[tuple[PairExample, tuple[Path, Path]]], list[str]]:
    """The ``split`` (``train`` or ``eval``) files of a ``data`` section
    (:class:`psrl.reward_model.reward_model_config.PairDataConfig`), ShareGPT JSON (``*.json``) or pairs JSONL by
    suffix, their images resolved under each file's :func:`psrl.data.records.records_root` (the section's
    ``data_root``, else the file's folder): ``([(example, its two resolved image paths)], problems)``. Raises
    ``RecordError`` naming ``data.<split>`` for a missing file."""
    examples, problems = [], []
    for f in data.files(getattr(data, split)):
        if not Path(f).is_file():
            raise RecordError(f"data.{split}: file not found: {f}")
        read, bad = read_sharegpt(f) if Path(f).suffix.lower() == ".json" else read_pairs(f)
        resolved, escaped = resolve_examples(read, records_root(f, data.data_root))
        examples += resolved
        problems += bad + escaped
    return examples, problems


__all__ = ["IMAGE_PLACEHOLDER", "example_from_sharegpt", "load_examples", "read_sharegpt", "write_sharegpt"]
