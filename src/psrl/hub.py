"""The Hugging Face Hub, one helper per job, all through ``huggingface_hub`` (its token, ``HF_ENDPOINT``,
``HF_HUB_OFFLINE``):

* ``hf://`` dataset paths for records files and their folders (:func:`hub_records_file`, :func:`hub_folder`;
  :func:`psrl.data.records.local_root` is where a data root meets them);
* the commit a model revision resolved to, read from the local Hub cache (:func:`resolved_commit`);
* uploading a folder as a model repository (:func:`upload_model_folder`), after :func:`check_can_push`.

A dataset path is ``hf://[datasets/]<org>/<name>[@<revision>][/<path in the repo>]`` (the ``datasets/`` prefix and
``@revision`` as ``huggingface_hub.HfFileSystem`` writes them). Its files are fetched once per commit with
``hf_hub_download(repo_type="dataset", local_dir=...)`` into ``$HF_HOME/psrl/datasets/datasets--<org>--<name>/
snapshots/<commit>/``, laid out like the Hub cache (``refs/<revision>`` holds the commit a branch or tag resolved
to, so an offline run finds it again). They are real files, not the Hub cache's symlinks into ``blobs/``: a data
root must hold its images (:func:`psrl.data.records.resolve_under` resolves symlinks and refuses what leaves the
root). Offline, a path that was never fetched is a one-line :class:`HubError`.

This module imports nothing from psrl; callers turn :class:`HubError` into their own user-facing error.
"""
from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants  # light: the heavy clients are imported where used

logger = logging.getLogger(__name__)

HF_SCHEME = "hf://"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_RECORD_SUFFIXES = (".jsonl", ".txt")


class HubError(Exception):
    """A Hub path, repository, revision or upload failed; the message is one line naming the path and the fix."""


@dataclass(frozen=True)
class HubPath:
    """A parsed ``hf://`` path: ``repo_id`` (``org/name``), ``path`` in the repository (``""`` = its root) and
    ``revision`` (branch, tag or commit; ``None`` = ``main``)."""

    repo_id: str
    path: str = ""
    revision: str | None = None
    repo_type: str = "dataset"

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}" + (f"/{self.path}" if self.path else "")


def is_hf_uri(value) -> bool:
    """Whether ``value`` is a string starting with ``hf://``."""
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hf_uri(uri: str) -> HubPath:
    """``hf://[datasets/]org/name[@revision][/path]`` -> :class:`HubPath`.

    Raises:
        HubError: not an ``hf://`` path, a bad repository id, an empty revision or one with ``/``, or a path with
            ``..``, ``.`` or empty parts.
    """
    if not is_hf_uri(uri):
        raise HubError(f"{uri!r} is not an hf:// path (hf://<org>/<dataset>[@revision][/file])")
    rest = uri[len(HF_SCHEME):]
    if rest.startswith("datasets/"):
        rest = rest[len("datasets/"):]
    parts = rest.split("/")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise HubError(f"{uri!r}: expected hf://<org>/<dataset>[@revision][/file]")
    name, _, revision = parts[1].partition("@")
    repo_id = f"{parts[0]}/{name}"
    if "@" in parts[1] and not revision:
        raise HubError(f"{uri!r}: empty revision after '@'")
    try:
        check_repo_id(repo_id)
    except HubError as e:
        raise HubError(f"{uri!r}: {e}") from None
    path_parts = parts[2:]
    if path_parts and path_parts[-1] == "":
        path_parts = path_parts[:-1]  # a trailing slash names a folder
    if any(p in ("", ".", "..") for p in path_parts):
        raise HubError(f"{uri!r}: the path inside the repository may not contain empty, '.' or '..' parts")
    return HubPath(repo_id=repo_id, path="/".join(path_parts), revision=revision or None)


def hub_offline() -> bool:
    """True when ``huggingface_hub`` will not contact the Hub (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``)."""
    env = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
              for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or env


def dataset_home() -> Path:
    """Where ``hf://`` dataset files are kept: ``$HF_HOME/psrl/datasets`` (``~/.cache/huggingface/...``)."""
    return Path(constants.HF_HOME) / "psrl" / "datasets"


def _repo_home(hp: HubPath) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return dataset_home() / repo_folder_name(repo_id=hp.repo_id, repo_type=hp.repo_type)


def _translate(e: Exception, hp: HubPath, what: str) -> HubError:
    """One line for what ``huggingface_hub`` raised about ``hp`` (its own messages span several lines)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, GatedRepoError):
        return HubError(f"{hp}: the dataset {hp.repo_id} is gated; accept its terms on its Hub page and log in "
                        "(`hf auth login` or HF_TOKEN)")
    if isinstance(e, RepositoryNotFoundError):
        return HubError(f"{hp}: no dataset repository {hp.repo_id!r} on the Hub ({constants.ENDPOINT}); check the "
                        "id (a private dataset needs `hf auth login` or HF_TOKEN)")
    if isinstance(e, RevisionNotFoundError):
        return HubError(f"{hp}: the dataset {hp.repo_id} has no revision {hp.revision!r}")
    if isinstance(e, OfflineModeIsEnabled) or hub_offline():
        return HubError(f"{hp}: {what} is not in the local cache ({dataset_home()}) and the Hub is offline "
                        "(HF_HUB_OFFLINE is set); run once online to fetch it, or unset HF_HUB_OFFLINE")
    if isinstance(e, EntryNotFoundError):
        return HubError(f"{hp}: the dataset {hp.repo_id} has no file {what!r} at revision {hp.revision or 'main'}")
    return HubError(f"{hp}: could not fetch {what} from the Hub ({constants.ENDPOINT}): {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}")


def _resolve_commit(hp: HubPath) -> str:
    """The commit ``hp.revision`` names: itself when it is one; online the Hub's answer (remembered in
    ``refs/<revision>``); offline what was remembered."""
    revision = hp.revision or "main"
    if _COMMIT.match(revision):
        return revision
    ref = _repo_home(hp) / "refs" / revision
    if hub_offline():
        if ref.is_file():
            return ref.read_text().strip()
        raise HubError(f"{hp}: the dataset was never fetched into {dataset_home()} and the Hub is offline "
                       "(HF_HUB_OFFLINE is set); run once online to fetch it, or unset HF_HUB_OFFLINE")
    from huggingface_hub import HfApi

    try:
        commit = HfApi().repo_info(hp.repo_id, repo_type=hp.repo_type, revision=revision).sha
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the path
        raise _translate(e, hp, "the repository") from None
    if not commit:
        raise HubError(f"{hp}: the Hub ({constants.ENDPOINT}) did not say which commit {revision!r} is")
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return commit


def _snapshot(hp: HubPath, commit: str) -> Path:
    return _repo_home(hp) / "snapshots" / commit


def _download(hp: HubPath, commit: str, filename: str, *, missing_ok: bool = False) -> Path | None:
    """One file of the repository at ``commit`` as a real file under the snapshot folder (no network when it is
    there already: ``huggingface_hub`` checks the commit in its download metadata). ``missing_ok``: ``None`` when
    the repository has no such file (the Hub said 404), instead of an error."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        return Path(hf_hub_download(hp.repo_id, filename, repo_type=hp.repo_type, revision=commit,
                                    local_dir=_snapshot(hp, commit)))
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the path
        if missing_ok and isinstance(e, RemoteEntryNotFoundError):
            return None
        raise _translate(e, hp, filename) from None


def _list_files(hp: HubPath, commit: str) -> list[str]:
    """The repository's files at ``commit`` (online), or those already fetched (offline)."""
    if hub_offline():
        root = _snapshot(hp, commit)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_file() and ".cache" not in p.relative_to(root).parts)
    from huggingface_hub import HfApi

    try:
        return sorted(HfApi().list_repo_files(hp.repo_id, repo_type=hp.repo_type, revision=commit))
    except Exception as e:  # noqa: BLE001
        raise _translate(e, hp, "the file list") from None


def _pick_records_file(hp: HubPath, commit: str) -> str:
    """``records.jsonl`` at the root, else the repository's one ``.jsonl`` (else its one ``.txt``)."""
    files = _list_files(hp, commit)
    if "records.jsonl" in files:
        return "records.jsonl"
    for suffix in _RECORD_SUFFIXES:
        found = [f for f in files if f.endswith(suffix)]
        if len(found) == 1:
            return found[0]
        if found:
            shown = ", ".join(found[:5]) + (" ..." if len(found) > 5 else "")
            raise HubError(f"{hp}: the dataset has {len(found)} {suffix} files ({shown}); name one, e.g. "
                           f"{HubPath(hp.repo_id, found[0], hp.revision)}")
    raise HubError(f"{hp}: the dataset has no records file (.jsonl records or .txt prompts); name the file, e.g. "
                   f"{HubPath(hp.repo_id, 'train.jsonl', hp.revision)}")


def referenced_files(text: str, base: str) -> list[str]:
    """Repository paths of the images a records JSONL names (``subjects[].image``, ``target``), relative to the
    records file's folder ``base``. Lines that are not records and paths that are absolute or leave the repository
    are skipped here: reading the records reports them. Pure function."""
    found: dict[str, None] = {}
    for line in text.splitlines():
        try:
            d = json.loads(line) if line.strip() else None
        except ValueError:
            continue
        if not isinstance(d, dict):
            continue
        subjects = d.get("subjects") if isinstance(d.get("subjects"), list) else []
        for rel in [s.get("image") for s in subjects if isinstance(s, dict)] + [d.get("target")]:
            if not isinstance(rel, str) or not rel or rel.startswith("/") or "\\" in rel:
                continue
            full = posixpath.normpath(posixpath.join(base, rel))
            if full != ".." and not full.startswith("../"):
                found[full] = None
    return list(found)


def _records_file(uri: str) -> Path:
    hp = parse_hf_uri(uri)
    commit = _resolve_commit(hp)
    filename = hp.path or _pick_records_file(hp, commit)
    if not filename.endswith(_RECORD_SUFFIXES):
        raise HubError(f"{hp}: {filename!r} is not a records file (.jsonl records or .txt prompts, one per line)")
    local = _download(hp, commit, filename)
    if filename.endswith(".jsonl"):
        wanted = referenced_files(local.read_text(encoding="utf-8", errors="replace"), posixpath.dirname(filename))
        if wanted:
            missing = _download_many(hp, commit, wanted)
            if missing:
                logger.warning("%s: %d of the %d images its records name are not in the dataset (e.g. %s); "
                               "checking the records will name them", hp, len(missing), len(wanted), missing[0])
    logger.info("records %s -> %s (commit %s)", uri, local, commit)
    return local


def _download_many(hp: HubPath, commit: str, files: list[str]) -> list[str]:
    """Fetch ``files`` at ``commit`` on 8 threads; returns the ones the repository does not have (a record's
    problem, reported with the record when the records are checked, not a download failure). Offline, the files of
    the commit's folder are all there is: they were fetched together with the records file."""
    if hub_offline():
        return [name for name in files if not (_snapshot(hp, commit) / name).is_file()]
    with ThreadPoolExecutor(8, thread_name_prefix="psrl-hub") as pool:
        got = list(pool.map(lambda name: _download(hp, commit, name, missing_ok=True), files))
    return [name for name, path in zip(files, got) if path is None]


def hub_records_file(uri: str) -> Path:
    """The local copy of an ``hf://`` records file (a ``.jsonl`` of records or a Flow-GRPO ``.txt`` of prompts),
    with every image its records name fetched beside it at the same commit, so the file's folder is their data
    root. Without a file name the dataset's ``records.jsonl`` is taken, else its only ``.jsonl`` (else ``.txt``).
    Resolved once per process: every reader of one path sees one commit.

    Raises:
        HubError: a bad path, an unknown repository, revision or file, a gated dataset, an unreachable Hub, or a
            path never fetched while offline (one line each).
    """
    # one commit per process, per cache folder, endpoint and offline setting (a change of any fetches again)
    key = (uri, str(dataset_home()), constants.ENDPOINT, hub_offline())
    if key not in _RECORDS_FILES:
        _RECORDS_FILES[key] = _records_file(uri)
    return _RECORDS_FILES[key]


_RECORDS_FILES: dict[tuple[str, str, str, bool], Path] = {}


def hub_folder(uri: str) -> Path:
    """The local copy of an ``hf://`` dataset folder (or whole dataset), e.g.
    ``hf://google/dreambooth/dataset`` for DreamBench's ``--data-root``: ``snapshot_download`` with
    ``allow_patterns="<folder>/**"`` into the snapshot folder of the resolved commit.

    Raises:
        HubError: as :func:`hub_records_file`, or a folder with no files.
    """
    from huggingface_hub import snapshot_download

    hp = parse_hf_uri(uri)
    commit = _resolve_commit(hp)
    root = _snapshot(hp, commit)
    try:
        snapshot_download(hp.repo_id, repo_type=hp.repo_type, revision=commit, local_dir=root,
                          allow_patterns=[f"{hp.path}/**"] if hp.path else None)
    except Exception as e:  # noqa: BLE001
        raise _translate(e, hp, hp.path or "the dataset") from None
    folder = root / hp.path if hp.path else root
    if not folder.is_dir() or not any(p.is_file() for p in folder.rglob("*")):
        raise HubError(f"{hp}: the dataset has no files under {hp.path or '/'!r} at commit {commit}")
    return folder


def resolved_commit(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str | None:
    """The commit ``revision`` (default ``main``) of ``repo_id`` resolved to when it was last downloaded into the
    Hub cache (``refs/<revision>``), or the revision itself when it is a commit; ``None`` when the cache does not
    know. No network."""
    from huggingface_hub.file_download import repo_folder_name

    revision = revision or "main"
    if _COMMIT.match(revision):
        return revision
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "refs" / revision
    try:
        return ref.read_text().strip() or None
    except OSError:
        return None


def snapshot_commit(path: str | os.PathLike) -> str | None:
    """The commit of a local folder inside a Hub cache snapshot (``.../snapshots/<commit>/...``), else ``None``."""
    parts = Path(os.path.abspath(path)).parts
    for i, part in enumerate(parts[:-1]):
        if part == "snapshots" and _COMMIT.match(parts[i + 1]):
            return parts[i + 1]
    return None


def check_repo_id(repo_id: str) -> None:
    """Raise :class:`HubError` (one line) unless ``repo_id`` is a valid model repository id (``org/name``, or a
    bare ``name`` for the token's own namespace)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not isinstance(repo_id, str) or not repo_id:
        raise HubError("the Hub repository id is empty; give one like <user or org>/<name>")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid Hub repository id ({str(e).splitlines()[0]})") from None


def check_can_push(repo_id: str) -> None:
    """Fail early, before any run or upload, when pushing to ``repo_id`` cannot work: a bad repository id, the Hub
    offline, or no token (``HF_TOKEN`` or ``hf auth login``). The token itself is never shown.

    Raises:
        HubError: one line naming the problem and the fix.
    """
    from huggingface_hub import get_token

    check_repo_id(repo_id)
    if hub_offline():
        raise HubError(f"cannot push to {repo_id}: the Hub is offline (HF_HUB_OFFLINE is set); unset it, or push "
                       "later with `psrl push`")
    if not get_token():
        raise HubError(f"cannot push to {repo_id}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")


def upload_model_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False,
                        commit_message: str = "Upload LoRA trained with psrl",
                        finalize=None) -> tuple[str, str]:
    """``create_repo(exist_ok=True)`` then ``upload_folder`` of ``folder`` as a model repository.

    ``repo_id`` may be a bare name (the token's user namespace, as ``create_repo`` resolves it). ``finalize``: an
    optional callable ``(full_repo_id) -> None`` run between the two, to write what needs the final id (the model
    card's snippet). Returns ``(repo_id, commit_url)``.

    Raises:
        HubError: see :func:`check_can_push`; the Hub refused the repository or the upload (one line, no token).
    """
    from huggingface_hub import HfApi

    check_can_push(repo_id)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        full_id = url.repo_id
        if finalize is not None:
            finalize(full_id)
        info = api.upload_folder(repo_id=full_id, repo_type="model", folder_path=str(folder),
                                 commit_message=commit_message)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - every failure becomes one line naming the repository
        first = str(e).splitlines()[0] if str(e) else ""
        raise HubError(f"upload to {repo_id} on {constants.ENDPOINT} failed: {type(e).__name__}: {first}") from None
    return full_id, str(info.commit_url)


__all__ = [
    "HF_SCHEME",
    "HubError",
    "HubPath",
    "check_can_push",
    "check_repo_id",
    "dataset_home",
    "hub_folder",
    "hub_offline",
    "hub_records_file",
    "is_hf_uri",
    "parse_hf_uri",
    "referenced_files",
    "resolved_commit",
    "snapshot_commit",
    "upload_model_folder",
]
