"""Typed configs from YAML: dataclasses, unknown keys rejected by name, dotted ``--set`` overrides, dumps.

Every config in psrl is a (nested) ``@dataclass``. ``from_dict`` builds one from plain data and raises
:class:`ConfigError` naming the dotted key, the bad value and the file; ``__post_init__`` methods validate values.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from collections.abc import Callable

import yaml

from psrl.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


Source = Union[str, Callable[[str], str], None]

_SECRET = re.compile(r"(key|token|secret|password)", re.IGNORECASE)


def _where(source: Source, key: str) -> str:
    """`` (in FILE)`` or, for a key set on the command line, `` (from --set KEY=VALUE)``."""
    if source is None:
        return ""
    if callable(source):
        return source(key)
    return f" (in {source})"


class _OverrideSource:
    """Where each key came from: ``--set`` for the keys an override touched, ``base`` for the rest; also the raw
    text of each override, so a string field gets what was typed (``--set model.path=0123`` is ``"0123"``, not
    YAML's 83; ``--set host=::`` is ``"::"``)."""

    def __init__(self, base: str, overrides: list[str] | None):
        self.base = base
        self.touched: list[tuple[str, str]] = []
        self.raw: dict[str, str] = {}
        for item in overrides or []:
            key, _, value = item.partition("=")
            key = key.strip()
            shown = "***" if _SECRET.search(key.rsplit(".", 1)[-1]) else value
            self.touched.append((key, f"{key}={shown}"))
            self.raw[key] = value

    def __call__(self, key: str) -> str:
        for path, text in reversed(self.touched):
            if path == key or path.startswith(key + ".") or key.startswith(path + "."):
                return f" (from --set {text})"
        return f" (in {self.base})"


def override_source(base: str, overrides: list[str] | None) -> Source:
    """A source that names ``--set`` for the keys an override touched and ``base`` for the rest. Values of keys
    that look secret (``*key*``, ``*token*``, ...) are shown as ``***``."""
    return _OverrideSource(base, overrides)


def _raw_override(source: Source, key: str) -> str | None:
    return source.raw.get(key) if isinstance(source, _OverrideSource) else None


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-5"`` -> (["train", "lr"], 1e-5). The value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply dotted overrides to a plain dict (in place) and return it. Lists are indexed by integers."""
    for item in overrides or []:
        path, value = parse_override(item)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, part, path[: i + 1])]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {item!r}: {'.'.join(path[: i + 1])} is not a mapping")
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(node, last, path)] = value
        else:
            node[last] = value
    return data


def _list_index(node: list, part: str, path: list[str]) -> int:
    try:
        idx = int(part)
        node[idx]
        return idx
    except (ValueError, IndexError) as e:
        raise ConfigError(f"override key {'.'.join(path)}: {part!r} is not a valid index of a list of "
                          f"{len(node)}") from e


# TRL / diffusers / transformers ``TrainingArguments`` names accepted for psrl's keys, in any section that has the
# psrl key (a tuple: the first of its names the section has). The loader renames them before the unknown-key check;
# dumps and checkpoints always use the psrl name.
ALIASES: dict[str, str | tuple[str, ...]] = {
    "learning_rate": "lr",
    "gradient_accumulation_steps": "gradient_accumulation",
    "save_total_limit": "keep_last",
    "report_to": "tracker",
    "logging_steps": "log_every",
    "save_steps": "save_every",
    "warmup_steps": "lr_warmup_steps",
    "adam_epsilon": "adam_eps",
    "per_device_train_batch_size": ("train_batch_size", "batch_size"),
}


def _alias_target(alias: str, fields: Any) -> str | None:
    """The psrl name ``alias`` stands for in a section whose field names are ``fields`` (None: not an alias
    there)."""
    targets = ALIASES.get(alias)
    if targets is None:
        return None
    for name in (targets,) if isinstance(targets, str) else targets:
        if name in fields:
            return name
    return None


def aliases_of(cls: type) -> dict[str, list[str]]:
    """``{psrl field name: [alias, ...]}`` for the fields of dataclass ``cls`` that have an alias."""
    names = {f.name for f in dataclasses.fields(cls)}
    out: dict[str, list[str]] = {}
    for alias in ALIASES:
        target = _alias_target(alias, names)
        if target is not None:
            out.setdefault(target, []).append(alias)
    return out


def _resolve_aliases(data: dict, fields: Any, prefix: str, source: Source, renamed: dict[str, str]) -> dict:
    """``data`` with alias keys (:data:`ALIASES`, and the old names of a class's renamed fields, ``renamed``:
    these with a warning) renamed to their psrl names. Both names in one mapping is an error naming both, unless
    exactly one of them was set with ``--set`` (the command line overrides the file)."""
    if not any(k in ALIASES or k in renamed for k in data):
        return data
    out = dict(data)
    for alias in [k for k in data if k in ALIASES or k in renamed]:
        target = renamed.get(alias) or _alias_target(alias, fields)
        if target is None or alias in fields:
            continue
        if alias in renamed:
            dotted = f"{prefix}.{alias}" if prefix else alias
            log.warning("config key %r%s is deprecated; rename it %r", dotted, _where(source, dotted),
                        f"{prefix}.{target}" if prefix else target)
        value = out.pop(alias)
        if target in out:
            dotted = [f"{prefix}.{n}" if prefix else n for n in (alias, target)]
            from_set = [_raw_override(source, d) is not None for d in dotted]
            if from_set == [False, True]:
                continue  # the psrl name came from --set: it wins over the file's alias
            if from_set != [True, False]:
                raise ConfigError(f"{dotted[0]!r} is an alias of {dotted[1]!r} and both are set"
                                  f"{_where(source, dotted[1])}; keep one")
        out[target] = value
        if isinstance(source, _OverrideSource):  # a string field set by alias keeps the text as typed
            dotted_alias, dotted_target = (f"{prefix}.{n}" if prefix else n for n in (alias, target))
            if dotted_alias in source.raw:
                source.raw.setdefault(dotted_target, source.raw[dotted_alias])
    return out


def from_dict(cls: type[T], data: Any, *, prefix: str = "", source: Source = None) -> T:
    """Build dataclass ``cls`` from ``data``. Unknown keys, wrongly typed values and non-finite numbers (NaN and
    inf pass every ``<= 0`` check, so they are refused here, once for every config) raise :class:`ConfigError`
    naming the dotted key, the value and where it came from (the file, or ``--set``). Old names of renamed fields
    (a class's ``RENAMED_KEYS``) load with a warning."""
    where = _where(source, prefix or "config")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {data!r}{where}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    data = _resolve_aliases(data, fields, prefix, source, getattr(cls, "RENAMED_KEYS", {}))
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"unknown config key {key!r}{_where(source, key)}; valid keys here: "
                          f"{', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(hints[name], value, key, source)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{prefix or 'config'}: {e}{where}") from e


def _convert(tp: Any, value: Any, key: str, source: Source, allow_raw: bool = True) -> Any:
    where = _where(source, key)
    origin = get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, prefix=key, source=source)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key, source, allow_raw=False)  # the parsed value first, every arm
            except ConfigError as e:
                errors.append(str(e))
        raw = _raw_override(source, key)
        if raw is not None and str in args and not isinstance(value, str):
            return raw  # a string field typed on the command line: the text as typed, not its YAML reading
        raise ConfigError(f"bad value for {key!r}: {value!r} does not match {_type_name(tp)}{where}")
    if origin is Literal:
        choices = get_args(tp)
        if isinstance(value, bool) and {"no", "yes"} & set(choices):
            value = "yes" if value else "no"  # YAML 1.1 reads a bare `no` / `yes` as a boolean
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"bad value for {key!r}: {value!r}; expected one of {choices}{where}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for {key!r}: expected a list, got {value!r}{where}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"bad value for {key!r}: expected {len(args)} items, got {value!r}{where}")
            return tuple(_convert(a, v, f"{key}.{i}", source) for i, (a, v) in enumerate(zip(args, value)))
        item_tp = args[0] if args else Any
        items = [_convert(item_tp, v, f"{key}.{i}", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"bad value for {key!r}: expected a mapping, got {value!r}{where}")
        _, vt = get_args(tp) or (Any, Any)
        return {k: _convert(vt, v, f"{key}.{k}", source) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {key!r}: expected true/false, got {value!r}{where}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"bad value for {key!r}: expected an integer, got {value!r}{where}")
    if tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(f"bad value for {key!r}: expected a number, got {value!r}{where}")
        if not math.isfinite(number):
            raise ConfigError(f"bad value for {key!r}: {value!r} is not a finite number{where}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raw = _raw_override(source, key) if allow_raw else None
        if raw is not None:
            return raw
        raise ConfigError(f"bad value for {key!r}: expected a string, got {value!r}{where}")
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def to_dict(cfg: Any) -> Any:
    """Plain-data view of a config (dataclasses, tuples -> lists) for YAML dumps and hashing."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                default: dict | None = None, *, paths: tuple[str, ...] = (),
                default_name: str = "embedded default") -> T:
    """YAML file (or ``default`` when no path, named ``default_name`` in errors) + dotted overrides -> validated
    dataclass ``cls``. The values at the dotted keys ``paths`` (a string, or each string of a list) that are
    relative and do not exist relative to the working directory resolve against the file's folder when they exist
    there, so configs ship beside their data and weights."""
    data = load_yaml(path) if path is not None else dict(default or {})
    apply_overrides(data, overrides)
    cfg = from_dict(cls, data, source=override_source(str(path) if path is not None else default_name, overrides))
    for key in paths if path is not None else ():
        *parents, name = key.split(".")
        node = cfg
        for part in parents:
            node = getattr(node, part)
        value = getattr(node, name)
        setattr(node, name, [beside(v, path) for v in value] if isinstance(value, list) else beside(value, path))
    return cfg


def beside(value: Any, config_path: str | Path) -> Any:
    """``value`` made relative to the folder of ``config_path`` when it is a relative path string that does not
    exist relative to the working directory but does exist there; anything else unchanged."""
    if not isinstance(value, str) or Path(value).is_absolute() or Path(value).exists():
        return value
    candidate = Path(config_path).resolve().parent / value
    return str(candidate) if candidate.exists() else value


def doc_entries(doc: str, section: str) -> dict[str, str]:
    """``{name: text}`` of a Google-style docstring section (``Attributes``, ``Args``) of a dedented docstring
    (:func:`inspect.getdoc`): entries are ``    name: text`` lines, continuation lines are indented deeper and
    joined with spaces, and one entry may name several fields (``lr, betas: AdamW ...``). Empty when the section
    is absent."""
    helps: dict[str, str] = {}
    marker = f"{section}:"
    lines = doc.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == marker and not line.startswith(" ")), None)
    if start is None:
        return helps
    entry = re.compile(r"^    ([A-Za-z_*][\w ,*]*?):\s+(.*)$")
    current: list[str] = []
    for line in lines[start + 1:]:
        m = entry.match(line)
        if m:
            current = [n.strip().lstrip("*") for n in m.group(1).split(",")]
            for n in current:
                helps[n] = m.group(2).strip()
        elif line.startswith("        ") and current:
            for n in current:
                helps[n] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            break
    return helps


def doc_paragraph(doc: str, label: str) -> str | None:
    """The text of a ``Label: text`` paragraph at the left margin of a dedented docstring (continuation lines
    indented), e.g. a reward's ``Score range:``; None when absent."""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(f"{label}:"):
            parts = [line[len(label) + 1:].strip()]
            for more in lines[i + 1:]:
                if not more.startswith("    ") or not more.strip():
                    break
                parts.append(more.strip())
            return " ".join(p for p in parts if p) or None
    return None


def field_help(cls: type) -> dict[str, str]:
    """One line of help per field of dataclass ``cls``: ``field(metadata={"help": ...})`` when given, else the
    first sentence of the field's entry in the class docstring's ``Attributes:`` section (an entry may name
    several fields: ``lr, betas: AdamW ...``; a subclass's entry replaces its base's). Used by ``--print-config``."""
    import inspect

    helps: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            helps.update(doc_entries(inspect.cleandoc(klass.__doc__ or ""), "Attributes"))
    out = {}
    for f in dataclasses.fields(cls):
        text = f.metadata.get("help") or helps.get(f.name, "")
        sentence = re.split(r"(?<=\.)\s+(?=[A-Z])", text, maxsplit=1)[0].rstrip(".").replace("``", "")
        out[f.name] = sentence
    return out


def dump_with_help(cfg: Any) -> str:
    """The config as YAML with each key's one-line help as a trailing comment (``psrl train --print-config``)."""
    lines: list[str] = []
    _dump_help(cfg, lines, 0)
    return "\n".join(lines) + "\n"


def _dump_help(cfg: Any, lines: list[str], indent: int) -> None:
    helps = field_help(type(cfg))
    aliases = aliases_of(type(cfg))
    pad = "  " * indent
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        text = helps.get(f.name, "")
        if f.name in aliases:
            text = f"{text} (alias: {', '.join(aliases[f.name])})".strip()
        note = f"  # {text}" if text else ""
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:{note}")
            _dump_help(value, lines, indent + 1)
        elif isinstance(value, list) and value and all(dataclasses.is_dataclass(v) for v in value):
            lines.append(f"{pad}{f.name}:{note}")
            for item in value:
                text = yaml.safe_dump(to_dict(item), sort_keys=False, default_flow_style=True, width=10**6).strip()
                lines.append(f"{pad}  - {text}")
        else:
            text = yaml.safe_dump(to_dict(value), default_flow_style=True, width=10**6).strip()
            text = text.removesuffix("\n...").removesuffix(" ...").strip()
            lines.append(f"{pad}{f.name}: {text}{note}")


def dump_yaml(cfg: Any, path: str | Path) -> None:
    from psrl.fileio import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_range(obj: Any, names: str | tuple[str, ...], lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False, section: str = "") -> None:
    """The one range check of ``__post_init__`` methods: ``ValueError("<section>.<name> must be <range>, got
    <value>")`` unless ``lo <= obj.<name> <= hi`` for each of ``names`` (one field name or a tuple of them;
    ``lo_open`` / ``hi_open``: strict; ``None``: unbounded). A ``None`` value is not checked (an optional field
    left unset)."""
    for name in (names,) if isinstance(names, str) else names:
        value = getattr(obj, name)
        if value is None:
            continue
        if ((lo is None or (value > lo if lo_open else value >= lo))
                and (hi is None or (value < hi if hi_open else value <= hi))):
            continue
        if lo is not None and hi is not None:
            rule = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        elif lo is not None:
            rule = f"{'>' if lo_open else '>='} {lo}"
        else:
            rule = f"{'<' if hi_open else '<='} {hi}"
        raise ValueError(f"{section + '.' if section else ''}{name} must be {rule}, got {value}")
