"""``lavic-ref push``: a fine-tuned LaViC published as a Hub model repo, and Hub repo ids read back by the plugin.

The repo holds what running the model elsewhere needs, and nothing else (see docs/lavic.md, "Publishing")::

    README.md                                   the model card, rendered for the repo
    best/{adapter_config.json, adapter_model.safetensors, lavic_base.json}      the rec adapter
    distill/{adapter_config.json, adapter_model.safetensors, lavic_base.json}   the distill adapter, if any
    item_embeddings-<base hash>-<adapter hash>.safetensors                      the item embeddings, if any

Each ``lavic_base.json`` names the base by its Hub id; the item embeddings' metadata names the base by its Hub id
and the distill adapter by its folder in the repo. Adapter files are uploaded byte for byte (their hashes are
what the embeddings and the rec adapter record); the embeddings' tensors too. ``last/`` checkpoints (optimizer
state), ``history.json`` and ``model_card.json`` (absolute paths of the training machine) stay home.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lavic_ref.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, BASE_FILE, AdapterError, adapter_fingerprint, \
    resolve_adapter_dir, saved_base
from reddit_amazon.hub_push import PushRefused

REC_DIR = "best"
DISTILL_DIR = "distill"
EMBEDDINGS_PATTERN = "item_embeddings-*.safetensors"
#: Everything the repo layout owns: a push replaces these, and deletes those of an earlier push it does not have.
OWNED_PATTERNS = ("README.md", f"{REC_DIR}/*", f"{DISTILL_DIR}/*", EMBEDDINGS_PATTERN)


class PublishError(PushRefused):
    """A training output folder that cannot be published as it is."""


@dataclass(frozen=True)
class RepoFile:
    """One file of the repo: its path there and its content (bytes, or a local file uploaded as it is)."""

    path_in_repo: str
    content: bytes | Path

    def read_bytes(self) -> bytes:
        return self.content if isinstance(self.content, bytes) else self.content.read_bytes()


@dataclass(frozen=True)
class TrainedModel:
    """What a ``finetune --out`` folder's run used, as its ``model_card.json`` and adapters record it."""

    out: Path
    rec_adapter: Path
    distill_adapter: Path | None
    item_embeddings: Path | None
    base_id: str

    @property
    def local_paths(self) -> list[str]:
        """Paths of this machine that no uploaded byte may hold."""
        paths = [self.out, self.rec_adapter, self.distill_adapter, self.item_embeddings]
        recorded_base = (saved_base(self.rec_adapter) or {}).get("base")
        if recorded_base and Path(recorded_base).expanduser().exists():
            paths.append(Path(recorded_base))
        texts = {str(Path(path).expanduser().absolute()) for path in paths if path}
        texts |= {str(Path(path).expanduser().resolve()) for path in paths if path}
        return sorted(texts)


def trained_model(out: Path, base_id: str | None = None) -> TrainedModel:
    """The adapters and item embeddings ``out``'s fine-tuning used, checked to still be the ones it used; refused
    (:class:`PublishError`) where its base has no Hub id and ``base_id`` gives none."""
    from cards.model_card import hub_model_id
    from lavic_ref.card import CARD_INPUTS, read_card_inputs, published_base

    if not (out / CARD_INPUTS).is_file():
        raise PublishError(f"{out} has no {CARD_INPUTS}: give the --out folder of a finished `lavic-ref finetune`")
    inputs = read_card_inputs(out)
    try:
        rec = resolve_adapter_dir(out)
    except AdapterError as error:
        raise PublishError(str(error)) from error
    if base_id is not None and hub_model_id(base_id) is None:
        raise PublishError(f"--base-id {base_id}: not a Hub model id (name or owner/name)")
    record = saved_base(rec) or {}
    base_id = base_id or hub_model_id(inputs.get("base_model")) or published_base(record.get("base"))
    if not base_id:
        raise PublishError(f"the base model of {out} ({Path(str(record.get('base') or '?')).name}) is a local "
                           "checkpoint naming no Hub id, which others cannot load: give the Hub id of the same "
                           "weights with --base-id")
    adapters = inputs.get("adapters") or {}
    distill = _recorded_path(adapters.get("distill_adapter"), "distill adapter", out)
    embeddings = _recorded_path(adapters.get("item_embeddings"), "item embeddings", out)
    if distill is not None:
        distill = resolve_adapter_dir(distill)
    _check_same_vision(rec, distill, embeddings)
    return TrainedModel(out, rec, distill, embeddings, base_id)


def _recorded_path(value: Any, what: str, out: Path) -> Path | None:
    if not value:
        return None
    path = Path(str(value)).expanduser()
    if not path.exists():
        raise PublishError(f"the {what} {out} was fine-tuned with, {path}, is not there any more: it is part of "
                           "the published model; put it back where it was")
    return path


def _check_same_vision(rec: Path, distill: Path | None, embeddings: Path | None) -> None:
    """The distill adapter and item embeddings found at the recorded paths must be those the rec adapter was trained
    on (a distill or embed rerun into the same folder replaces them)."""
    trained = ((saved_base(rec) or {}).get("trained_with") or {}).get("item embeddings")
    wanted = f"vision adapter {adapter_fingerprint(distill)}"
    if distill is not None and isinstance(trained, str) and trained.startswith("vision adapter ") \
            and trained != wanted:
        raise PublishError(f"the rec adapter was fine-tuned on item embeddings of {trained}, but the distill adapter "
                           f"at {distill} is {wanted.removeprefix('vision ')}: it has changed since")
    if embeddings is not None:
        metadata = _embeddings_metadata(embeddings)
        if metadata.get("adapter_hash") not in (None, adapter_fingerprint(distill)):
            raise PublishError(f"the item embeddings {embeddings} were made with adapter {metadata['adapter_hash']}, "
                               f"not with the distill adapter {distill} ({adapter_fingerprint(distill)})")


def _embeddings_metadata(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    from lavic_ref.embed import read_metadata

    with safe_open(str(path), framework="pt") as handle:
        return read_metadata(handle)


@contextmanager
def repo_files(model: TrainedModel, repo_id: str) -> Iterator[list[RepoFile]]:
    """The files of the repo (see the module's docstring), checked to hold no path of this machine; the rewritten
    item embeddings live in a temporary folder while the block runs."""
    from lavic_ref.card import render_for_repo

    with tempfile.TemporaryDirectory(prefix="lavic-push-") as scratch:
        files = _adapter_files(model.rec_adapter, REC_DIR, model.base_id)
        adapters: dict[str, str | None] = {"rec_adapter": REC_DIR, "distill_adapter": None, "item_embeddings": None}
        if model.distill_adapter is not None:
            files += _adapter_files(model.distill_adapter, DISTILL_DIR, model.base_id)
            adapters["distill_adapter"] = DISTILL_DIR
        if model.item_embeddings is not None:
            name = model.item_embeddings.name
            files.append(RepoFile(name, _published_embeddings(model, Path(scratch) / name)))
            adapters["item_embeddings"] = name
        card = render_for_repo(model.out, repo_id, model.base_id, adapters)
        files.insert(0, RepoFile("README.md", card.encode("utf-8")))
        _check_no_local_path(files, model.local_paths)
        yield files


def _adapter_files(folder: Path, path_in_repo: str, base_id: str) -> list[RepoFile]:
    """An adapter's files as published: peft's as they are (their hash is the adapter's identity), its
    ``lavic_base.json`` naming the base by ``base_id``."""
    files = [RepoFile(f"{path_in_repo}/{name}", folder / name) for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS)]
    record = saved_base(folder)
    if record is not None:
        text = json.dumps({**record, "base": base_id}, indent=2) + "\n"
        files.append(RepoFile(f"{path_in_repo}/{BASE_FILE}", text.encode("utf-8")))
    return files


def _published_embeddings(model: TrainedModel, path: Path) -> Path:
    """The item embeddings with the same tensors and checked metadata (base weights fingerprint, adapter hash, each
    item's source), the base named by its Hub id and the distill adapter by its folder in the repo."""
    from safetensors.torch import load_file

    from lavic_ref.embed import save_atomic

    assert model.item_embeddings is not None
    metadata = _embeddings_metadata(model.item_embeddings)
    metadata["base"] = model.base_id
    if metadata.get("adapter") or metadata.get("adapter_path"):
        metadata["adapter"] = DISTILL_DIR
        metadata["adapter_path"] = ""  # a path of this machine; "adapter" is found relative to the repo
    return save_atomic(path, load_file(str(model.item_embeddings)), metadata)


def _check_no_local_path(files: list[RepoFile], local_paths: list[str]) -> None:
    """Refuse to publish a file holding a path of this machine (where the training lay is nobody's business)."""
    for file in files:
        data = file.read_bytes()
        for path in local_paths:
            if path.encode("utf-8") in data:
                raise PublishError(f"{file.path_in_repo} would publish the local path {Path(path).name!r} "
                                   f"({len(path)} characters): it is not pushed")


def push_model(out: str | os.PathLike, repo_id: str, *, base_id: str | None = None, private: bool = False,
               revision: str | None = None, token: str | None = None, endpoint: str | None = None) -> str:
    """Publish ``out`` (a ``lavic-ref finetune --out`` folder) as the Hub model repo ``repo_id`` in one commit; the
    repo's files of an earlier push that this one does not have (other item embeddings) are deleted in it. Returns
    the commit's URL. A ``revision`` branch not there yet is made from the default branch."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.utils import filter_repo_objects

    from reddit_amazon.hub_push import connection_errors_named, make_branch, require_token

    model = trained_model(Path(out), base_id)
    require_token(token)
    api = HfApi(endpoint=endpoint, token=token)  # endpoint None: the Hub (or $HF_ENDPOINT)
    with repo_files(model, repo_id) as files, connection_errors_named(api.endpoint):
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        make_branch(api, repo_id, "model", revision)
        remote = api.list_repo_files(repo_id, repo_type="model", revision=revision)
        uploaded = {file.path_in_repo for file in files}
        stale = sorted(set(filter_repo_objects(remote, allow_patterns=list(OWNED_PATTERNS))) - uploaded)
        operations: list[CommitOperationAdd | CommitOperationDelete] = [
            *(CommitOperationDelete(path_in_repo=path) for path in stale),
            *(CommitOperationAdd(path_in_repo=file.path_in_repo, path_or_fileobj=file.content) for file in files)]
        commit = api.create_commit(repo_id=repo_id, repo_type="model", operations=operations, revision=revision,
                                   commit_message=f"LaViC adapters from lavic-ref ({model.out.name})")
    return str(commit)


#: What each file option takes from a repo of this layout: the item embeddings come with the distill adapter their
#: metadata names by its folder in the repo (``finetune`` reads its training settings for the model card).
REPO_FILE_OPTIONS = {"rec_adapter": [f"{REC_DIR}/*"], "distill_adapter": [f"{DISTILL_DIR}/*"],
                     "item_embeddings": [EMBEDDINGS_PATTERN, f"{DISTILL_DIR}/*"]}


@dataclass(frozen=True)
class LocatedFile:
    """A file option's value as found: ``path`` the local file or folder; ``hub_source`` ``owner/name@commit`` where
    it is a Hub repo's file in the Hugging Face cache (what results name it by: the cache path is of this machine),
    else None."""

    path: str
    hub_source: str | None = None

    @property
    def recorded(self) -> str:
        """The value as results record it: the Hub repo and commit, else the local path."""
        return self.hub_source or self.path


def local_or_hub(value: str, option: str) -> LocatedFile:
    """``value`` as given where it is a local path that exists (it always wins); else, where it is a Hub model repo
    id (``owner/name``, or ``owner/name@revision``), the local copy of that repo's file for ``option`` (one of
    :data:`REPO_FILE_OPTIONS`), downloaded into the Hugging Face cache (``HF_HUB_OFFLINE=1``: taken from it), with
    the repo and the commit it resolved to. Any other value comes back as given, for the caller to report as
    missing."""
    from cards.model_card import hub_model_id

    if Path(value).expanduser().exists():
        return LocatedFile(value)
    repo_id, _, revision = value.partition("@")
    if hub_model_id(repo_id) is None or "/" not in repo_id:
        return LocatedFile(value)
    snapshot = _snapshot(repo_id, revision or None, REPO_FILE_OPTIONS[option], f"{option}={value}")
    source = f"{repo_id}@{snapshot.name}"  # snapshot_download's folder is named after the commit
    if option == "item_embeddings":
        found = sorted(snapshot.glob(EMBEDDINGS_PATTERN))
        if len(found) != 1:
            raise FileNotFoundError(f"{option}={value}: the repo holds {len(found)} files {EMBEDDINGS_PATTERN}, "
                                    "not one (a repo `lavic-ref push` wrote holds the one its adapters were "
                                    "trained with)")
        return LocatedFile(str(found[0]), source)
    folder = snapshot / (REC_DIR if option == "rec_adapter" else DISTILL_DIR)
    if not (folder / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{option}={value}: the repo has no {folder.name}/{ADAPTER_CONFIG} (a repo "
                                "`lavic-ref push` wrote holds the rec adapter in best/, the distill adapter in "
                                "distill/)")
    return LocatedFile(str(folder), source)


def _snapshot(repo_id: str, revision: str | None, patterns: list[str], given: str) -> Path:
    from huggingface_hub import snapshot_download

    from reddit_amazon.cli_errors import one_line

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=patterns))
    except OSError as error:  # the Hub's errors (no such repo or revision, offline and not cached) among them
        raise FileNotFoundError(f"{given}: no such local path, and the Hub model repo {repo_id} cannot be read "
                                f"({one_line(error)})") from error


def distill_adapter_of(embeddings: Path | None, metadata: dict[str, Any]) -> Path | None:
    """The folder of the distill adapter item embeddings (the file ``embeddings``, where known) were made with (None:
    the base vision tower's): the absolute path ``embed`` recorded; for embeddings a push published
    (``adapter_path`` cleared), the repo's folder beside them; else (embeddings from before ``adapter_path`` was
    recorded) the adapter as given."""
    adapter = metadata.get("adapter")
    if not adapter:
        return None
    if metadata.get("adapter_path"):
        return Path(metadata["adapter_path"])
    if "adapter_path" in metadata and embeddings is not None:
        return embeddings.expanduser().absolute().parent / adapter
    return Path(adapter)
