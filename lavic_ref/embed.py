"""Stage 3: each item's 5 embeddings, computed once for the whole catalog with the distilled vision adapter.

Stored as safetensors, one ``(5, D)`` tensor per item id; the metadata names the base model (and its
weights fingerprint) and the adapter (as given, its absolute path, its weights' hash), and the file name
carries both hashes so a cache made with other weights is never picked up by mistake; :func:`check_embeddings`
refuses a file made with another base model. Without an adapter (``--no-distill``) the base vision tower's CLS
outputs are stored: the paper's "no self-distillation" ablation. The metadata also records what each item's
embeddings were made from besides the weights (:class:`ItemSources`: the settings and its image's digest), so
:func:`embed_catalog` reuses those of an item whose image and settings are unchanged instead of embedding it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from lavic_ref.model import SUBIMAGES_PER_ITEM, Backbone, adapter_fingerprint, cls_embeddings, decode_image, \
    same_base_name, subimage_pixels
from lavic_ref.prompts import ITEM_TOKENS
from reddit_amazon.files import atomic_path, folder_lock, naming_write_failure, remove_abandoned_temp_files
from reddit_amazon.images import image_digest
from reddit_amazon.progress import bar_options, log_line

if TYPE_CHECKING:
    from reddit_amazon.schema import Item


class EmbeddingsError(ValueError):
    """Item embeddings that do not fit the model or adapter they are used with."""


def embeddings_filename(base: str, adapter: str | os.PathLike | None) -> str:
    base_hash = hashlib.sha256(str(base).encode()).hexdigest()[:8]
    return f"item_embeddings-{base_hash}-{adapter_fingerprint(adapter)}.safetensors"


@torch.inference_mode()
def iter_item_embeddings(backbone: Backbone, items: Sequence[tuple[str, bytes | None]], *,
                         batch_size: int = 16) -> Iterator[dict[str, torch.Tensor]]:
    """``{item_id: (5, D)}`` of each batch of ``(item_id, image bytes)`` pairs (a blank image where bytes are None)."""
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        images = [decode_image(data, item_id) for item_id, data in batch]
        embeddings = cls_embeddings(backbone.model, subimage_pixels(backbone.processor, images)).to("cpu")
        yield {item_id: row.clone() for (item_id, _), row in zip(batch, embeddings)}


def compute_item_embeddings(backbone: Backbone, items: Sequence[tuple[str, bytes | None]], *,
                            batch_size: int = 16, progress: bool = True) -> dict[str, torch.Tensor]:
    """``{item_id: (5, D)}`` from ``(item_id, image bytes)`` pairs (a blank image where bytes are None)."""
    result: dict[str, torch.Tensor] = {}
    with tqdm(total=len(items), desc="embed", unit="item", **bar_options(progress)) as bar:
        for batch in iter_item_embeddings(backbone, items, batch_size=batch_size):
            result.update(batch)
            bar.update(len(batch))
    return result


def save_item_embeddings(path: str | os.PathLike, embeddings: dict[str, torch.Tensor], *, base: str,
                         adapter: str | os.PathLike | None, base_fingerprint: str = "",
                         sources: ItemSources | None = None) -> Path:
    # "adapter" as given (the model card shows it); "adapter_path" finds it again from another working folder
    metadata = {"base": str(base), "base_fingerprint": base_fingerprint, "adapter": str(adapter or ""),
                "adapter_path": str(Path(adapter).resolve()) if adapter else "",
                "adapter_hash": adapter_fingerprint(adapter), **(sources.metadata() if sources else {})}
    return save_atomic(Path(path), embeddings, metadata)


def save_atomic(path: Path, embeddings: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Written under a hidden temporary name of its own, then renamed: a killed save leaves no visible file. The
    same embeddings and metadata give the same bytes (see :data:`METADATA_KEY`)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp, naming_write_failure(path):  # a full disk: safetensors' error names no file
        save_file({k: v.contiguous() for k, v in embeddings.items()}, str(tmp),
                  metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True, separators=(",", ":"))})
    return path


#: The one safetensors metadata entry our files have: all our entries, as JSON with sorted keys. safetensors writes
#: its metadata map in a random order, new in each process (a Rust HashMap: PYTHONHASHSEED does not fix it), so
#: files with several entries differed in bytes between two runs that computed the same embeddings.
METADATA_KEY = "lavic_ref"


def read_metadata(handle: Any) -> dict[str, str]:
    """The entries :func:`save_atomic` wrote, from an open safetensors file; a file written before they were kept
    under :data:`METADATA_KEY` has them as its metadata itself."""
    metadata = handle.metadata() or {}
    return json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else metadata


#: Bump when the way an item's embeddings are computed from its image changes (decoding, sub-images, which
#: vision output): embeddings of an older recipe are then embedded again, not reused.
EMBEDDING_RECIPE = 1


def embedding_settings(backbone: Backbone) -> dict[str, Any]:
    """What an item's embeddings depend on besides the weights (the file's base fingerprint and adapter hash) and
    its image: the recipe, the dtype, and the image processor (its class, which picks the resizing backend, and
    every setting, the 5-sub-image grid of :func:`~lavic_ref.model.fix_five_subimages` included)."""
    image_processor = backbone.processor.image_processor
    return {"recipe": EMBEDDING_RECIPE, "dtype": str(backbone.dtype).removeprefix("torch."),
            "subimages": SUBIMAGES_PER_ITEM, "image_processor": type(image_processor).__name__,
            "image_settings": json.loads(image_processor.to_json_string())}


def settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def image_source(image: bytes | None) -> str:
    """The image's digest ("none" without an image: a blank one is embedded)."""
    return image_digest(image) if image else "none"


@dataclass
class ItemSources:
    """What each item's embeddings in a file were made from besides the base weights and adapter (the same for the
    whole file): ``items`` maps an item id to ``<settings key>/<image digest>``, ``settings`` each key to its
    :func:`embedding_settings`. Stored as two JSON metadata entries; a file written before them has neither."""

    items: dict[str, str] = field(default_factory=dict)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    ITEMS_KEY = "item_sources"
    SETTINGS_KEY = "embedding_settings"

    @classmethod
    def of(cls, pairs: Sequence[tuple[str, bytes | None]], settings: dict[str, Any]) -> ItemSources:
        key = settings_key(settings)
        return cls({item_id: f"{key}/{image_source(image)}" for item_id, image in pairs}, {key: settings})

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ItemSources | None:
        """None where the file records none (written before they were), or what it records is not readable."""
        try:
            items, settings = json.loads(metadata[cls.ITEMS_KEY]), json.loads(metadata[cls.SETTINGS_KEY])
        except (KeyError, ValueError):
            return None
        if not (isinstance(items, dict) and isinstance(settings, dict)
                and all(isinstance(source, str) for source in items.values())):
            return None
        return cls(items, settings)

    def metadata(self) -> dict[str, str]:
        return {self.ITEMS_KEY: json.dumps(self.items, separators=(",", ":")),
                self.SETTINGS_KEY: json.dumps(self.settings, sort_keys=True, separators=(",", ":"))}

    def merged(self, other: ItemSources) -> ItemSources:
        """These items' sources, then ``other``'s (which win), with the settings the items refer to."""
        items = {**self.items, **other.items}
        used = {source.split("/", 1)[0] for source in items.values()}
        settings = {key: value for key, value in {**self.settings, **other.settings}.items() if key in used}
        return ItemSources(items, settings)


class ItemEmbeddings:
    """Cached item embeddings in one ``(num_items, 5, D)`` matrix, gathered by id in candidate order."""

    def __init__(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None):
        self.index = {item_id: row for row, item_id in enumerate(tensors)}
        self.matrix = torch.stack(list(tensors.values())) if tensors else torch.empty(0)
        self.metadata = metadata or {}
        self.device, self.dtype = self.matrix.device, self.matrix.dtype

    @classmethod
    def load(cls, path: str | os.PathLike) -> ItemEmbeddings:
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as handle:
            metadata = read_metadata(handle)
        return cls(load_file(str(path)), metadata)

    def identity(self) -> str:
        """What the embeddings were made with (the vision adapter's hash; their values' hash without metadata)."""
        if self.metadata.get("adapter_hash"):
            return f"vision adapter {self.metadata['adapter_hash']}"
        # numpy's stubs give ndarray __buffer__ only for Python >= 3.12: on 3.11 mypy sees no Buffer here.
        raw = self.matrix.detach().cpu().contiguous().view(torch.uint8).numpy()
        values = hashlib.sha256(raw)  # type: ignore[arg-type]
        return f"values {values.hexdigest()[:16]}"

    def to(self, device: torch.device, dtype: torch.dtype) -> ItemEmbeddings:
        """Move the matrix once (e.g. to the GPU) so lookups during training are a single index_select."""
        self.device, self.dtype = device, dtype
        self.matrix = self.matrix.to(device=device, dtype=dtype)
        return self

    def add(self, tensors: dict[str, torch.Tensor]) -> None:
        new = {k: v for k, v in tensors.items() if k not in self.index}
        if not new:
            return
        start = len(self.index)
        self.index.update({item_id: start + i for i, item_id in enumerate(new)})
        rows = torch.stack(list(new.values())).to(self.device, self.dtype)
        self.matrix = rows if self.matrix.numel() == 0 else torch.cat([self.matrix, rows])

    def missing(self, item_ids: Iterable[str]) -> list[str]:
        return [i for i in dict.fromkeys(item_ids) if i not in self.index]

    def stack(self, item_ids: Sequence[str]) -> torch.Tensor:
        """``(len(item_ids), 5, D)`` on the matrix's device."""
        absent = self.missing(item_ids)
        if absent:
            raise KeyError(f"no cached embedding for item(s) {', '.join(absent[:5])}"
                           + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""))
        rows = torch.tensor([self.index[i] for i in item_ids], device=self.matrix.device)
        return self.matrix.index_select(0, rows)


#: Items :func:`embed_catalog` embeds between two checkpoints: a killed run redoes at most these.
CHECKPOINT_ITEMS = 1024


def embed_catalog(backbone: Backbone, items: Iterable[Item], out_dir: str | os.PathLike, *,
                  adapter: str | os.PathLike | None, batch_size: int = 16,
                  checkpoint_items: int = CHECKPOINT_ITEMS, recompute: bool = False) -> Path:
    """Embed every item (blank image where it has none) and write the cache file into ``out_dir``.

    The file name depends on the base and adapter only, so a file already there with the same base weights and
    adapter keeps its other items (``embed --domain home`` then ``--domain fashion`` holds both domains), and its
    embeddings of an item whose image bytes and :func:`embedding_settings` are those of this run are reused, not
    computed again (``recompute`` computes every item again). Every ``checkpoint_items`` items computed are saved
    in a hidden folder beside the file, one subfolder per set of item ids: a rerun of an interrupted run (same
    weights, adapter, settings and items, images included) embeds only the items not saved yet, even after an
    embed of other items (another domain) into the same folder.
    """
    with embed_lock(out_dir):
        return embed_catalog_holding_lock(backbone, items, out_dir, adapter=adapter, batch_size=batch_size,
                                          checkpoint_items=checkpoint_items, recompute=recompute)


def embed_lock(out_dir: str | os.PathLike) -> AbstractContextManager[None]:
    """The lock an embed into ``out_dir`` holds (:class:`~reddit_amazon.files.FolderBusyError` while another embed
    holds it): another embed into the folder would merge with the file as it was before this one saved (dropping
    this one's items). ``lavic-ref embed`` takes it before loading the model, so a second run is refused at once,
    not after minutes of loading; a run that fails there (a bad ``--base``) leaves no lock file or folder behind."""
    return folder_lock(Path(out_dir), "lavic-ref embed", tidy_on_error=True)


def embed_catalog_holding_lock(backbone: Backbone, items: Iterable[Item], out_dir: str | os.PathLike, *,
                               adapter: str | os.PathLike | None, batch_size: int = 16,
                               checkpoint_items: int = CHECKPOINT_ITEMS, recompute: bool = False) -> Path:
    """:func:`embed_catalog` for a caller that holds :func:`embed_lock` of ``out_dir``."""
    if Path(out_dir).is_dir():  # a run killed while writing the file left its temporary, as large as the file
        remove_abandoned_temp_files(Path(out_dir))
    pairs = [(item.item_id, item.encoded_image()) for item in items]
    path = Path(out_dir) / embeddings_filename(backbone.base, adapter)
    sources = ItemSources.of(pairs, embedding_settings(backbone))
    (settings,) = sources.settings  # its key
    checkpoints = _Checkpoints(path.with_name(f".{path.name}.parts"), _ids_digest(pairs)[:16], {
        "base_fingerprint": backbone.fingerprint, "adapter_hash": adapter_fingerprint(adapter), "settings": settings,
        "items": _items_digest(sources)})
    there = _FileThere.read(path, backbone.fingerprint, adapter_fingerprint(adapter))
    computed = checkpoints.load()
    if computed:
        log_line(f"resuming: {len(computed)} of {len(pairs)} items were embedded before the interruption")
    reused = [] if there is None or recompute else [
        item_id for item_id, _ in pairs if item_id not in computed and there.holds_as(item_id, sources)]
    reused_ids = set(reused)
    todo = [pair for pair in pairs if pair[0] not in computed and pair[0] not in reused_ids]
    if there is not None:
        log_line(there.summary(pairs, todo, len(reused), sources, recompute))
    unsaved: dict[str, torch.Tensor] = {}
    with tqdm(total=len(pairs), initial=len(pairs) - len(todo), desc="embed", unit="item", **bar_options()) as bar:
        for batch in iter_item_embeddings(backbone, todo, batch_size=batch_size):
            unsaved.update(batch)
            bar.update(len(batch))
            if len(unsaved) >= checkpoint_items:
                checkpoints.save(unsaved)
                computed.update(unsaved)
                unsaved = {}
    computed.update(unsaved)
    if there is not None:
        kept = [item_id for item_id in there.item_ids if item_id not in sources.items]
        computed.update(there.tensors(reused))
        embeddings = {**there.tensors(kept), **{item_id: computed[item_id] for item_id, _ in pairs}}
        sources = (there.sources or ItemSources()).merged(sources)
    else:
        embeddings = {item_id: computed[item_id] for item_id, _ in pairs}
    saved = save_item_embeddings(path, embeddings, base=backbone.base, adapter=adapter,
                                 base_fingerprint=backbone.fingerprint, sources=sources)
    checkpoints.finish(set(embeddings))
    return saved


@dataclass
class _FileThere:
    """The embeddings file an embed adds to, made from the same base weights and adapter: its other items are kept,
    and its embeddings of this embed's items reused where they were made from the same image and settings. Read
    under the folder's lock, so it does not change while the embed runs."""

    path: Path
    item_ids: list[str]
    sources: ItemSources | None  # None: a file written before item sources were recorded

    @classmethod
    def read(cls, path: Path, base_fingerprint: str, adapter_hash: str) -> _FileThere | None:
        """None where there is no file, or it is of other base weights (its items are then not kept)."""
        from safetensors import safe_open

        if not path.is_file():
            return None
        with safe_open(str(path), framework="pt") as handle:
            metadata, item_ids = read_metadata(handle), list(handle.keys())
        if (metadata.get("base_fingerprint"), metadata.get("adapter_hash")) != (base_fingerprint, adapter_hash):
            log_line(f"{path} was made from other base weights (or another adapter): its {len(item_ids)} items "
                     "are replaced by this run's")
            return None
        return cls(path, item_ids, ItemSources.from_metadata(metadata))

    def holds_as(self, item_id: str, sources: ItemSources) -> bool:
        """Whether the file's embeddings of the item were made from the image and settings ``sources`` names."""
        return self.sources is not None and self.sources.items.get(item_id) == sources.items[item_id]

    def tensors(self, item_ids: Sequence[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as handle:
            return {item_id: handle.get_tensor(item_id) for item_id in item_ids}

    def summary(self, pairs: Sequence[tuple[str, bytes | None]], todo: Sequence[tuple[str, bytes | None]],
                reused: int, sources: ItemSources, recompute: bool) -> str:
        """What is reused from the file, and why each other item is embedded."""
        held = set(self.item_ids)
        if recompute:
            return (f"--recompute: embedding all {len(pairs)} items again, {sum(i in held for i, _ in pairs)} of "
                    f"them in {self.path.name}")
        reasons = Counter(self._why_embedded(item_id, held, sources) for item_id, _ in todo)
        why = ", ".join(f"{count} {reason}" for reason, count in reasons.items())
        return f"{self.path.name}: reusing {reused} of {len(pairs)} items" + (f"; embedding {len(todo)}: {why}"
                                                                               if todo else "")

    def _why_embedded(self, item_id: str, held: set[str], sources: ItemSources) -> str:
        if item_id not in held:
            return "new"
        if self.sources is None:
            return "without a record of their image (the file was written by a lavic-ref from before reuse)"
        recorded = self.sources.items.get(item_id)
        if recorded is None:
            return "without a record of their image (kept from a file written by a lavic-ref from before reuse)"
        if recorded.split("/", 1)[0] != sources.items[item_id].split("/", 1)[0]:
            return "made with other settings (dtype, image processor)"
        return "whose image changed"


def _ids_digest(pairs: Sequence[tuple[str, bytes | None]]) -> str:
    """Which items are embedded (their ids in order): names the checkpoints of that set."""
    return hashlib.sha256("\n".join(item_id for item_id, _ in pairs).encode()).hexdigest()


def _items_digest(sources: ItemSources) -> str:
    """What is embedded: item ids in order, and each image's digest (a new dataset version may change them), as
    ``sources`` records them (each image is hashed once)."""
    return hashlib.sha256("".join(f"{item_id}\0{source}\n" for item_id, source in sources.items.items())
                          .encode()).hexdigest()


class _Checkpoints:
    """Numbered safetensors parts of an unfinished :func:`embed_catalog`, in ``root/<items key>``: the parts of
    another set of items (another domain) are left for that set's own rerun while they are of use. Each part is
    stamped with what it was made from; parts of this set made from other weights or other images are deleted,
    not used. Only an embed holding the lock of the folder (:func:`embed_lock`) reads or deletes them, so none
    is deleted under a running embed."""

    def __init__(self, root: Path, items_key: str, made_from: dict[str, str]):
        self.root, self.folder, self.made_from = root, root / items_key, made_from

    def load(self) -> dict[str, torch.Tensor]:
        from safetensors import SafetensorError, safe_open

        found: dict[str, torch.Tensor] = {}
        for part in sorted(self.folder.glob("part-*.safetensors")):
            try:
                with safe_open(str(part), framework="pt") as handle:
                    if read_metadata(handle) != self.made_from:
                        self.remove()
                        return {}
                    found.update({key: handle.get_tensor(key) for key in handle.keys()})
            except (SafetensorError, OSError):  # a damaged part (parts are renamed into place whole): start over
                self.remove()
                return {}
        return found

    def save(self, embeddings: dict[str, torch.Tensor]) -> None:
        number = len(list(self.folder.glob("part-*.safetensors")))
        save_atomic(self.folder / f"part-{number:06d}.safetensors", embeddings, self.made_from)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self, saved: set[str]) -> None:
        """This set's parts are in the file, whose items are now ``saved``: remove them, the other sets' parts
        that are of no more use (:meth:`_of_no_use`), and ``root`` once no set is left."""
        self.remove()
        for folder in self.root.iterdir() if self.root.is_dir() else ():
            if folder.is_dir() and self._of_no_use(folder, saved):
                shutil.rmtree(folder, ignore_errors=True)
        if self.root.is_dir() and not any(entry.is_dir() for entry in self.root.iterdir()):
            shutil.rmtree(self.root, ignore_errors=True)

    def _of_no_use(self, folder: Path, saved: set[str]) -> bool:
        """Whether another set's parts are all made from other base weights than the file's now (a rerun of
        that set would delete them), damaged, or hold only items the file now holds from the same weights
        (what a rerun of that set would resume is already there): an interrupted embed of one domain followed
        by one of the whole catalog left its parts for good."""
        from safetensors import SafetensorError, safe_open

        made_from = {key: self.made_from[key] for key in ("base_fingerprint", "adapter_hash")}
        for part in folder.glob("part-*.safetensors"):
            try:
                with safe_open(str(part), framework="pt") as handle:
                    metadata = read_metadata(handle)
                    if (all(metadata.get(key) == value for key, value in made_from.items())
                            and not saved.issuperset(handle.keys())):
                        return False
            except (SafetensorError, OSError):  # damaged: its own rerun would delete it too
                continue
        return True


def check_embeddings(cache: ItemEmbeddings, path: str | os.PathLike | None, backbone: Backbone) -> None:
    """Refuse embeddings made with another base model, or not ``(5, LM hidden size)`` per item."""
    made_with = cache.metadata.get("base")
    recorded = cache.metadata.get("base_fingerprint")
    if recorded and backbone.fingerprint:
        same = recorded == backbone.fingerprint
    else:  # a file from before weights fingerprints: compare the names
        same = made_with is None or same_base_name(made_with, backbone.base)
    if not same:
        raise EmbeddingsError(
            f"item embeddings {path} were made with base model {made_with}"
            + (f" (weights {recorded})" if recorded else "")
            + f", not with {backbone.base} (weights {backbone.fingerprint}): run `lavic-ref embed` with this base")
    expected = (len(ITEM_TOKENS), backbone.model.get_input_embeddings().embedding_dim)
    if cache.matrix.numel() and tuple(cache.matrix.shape[1:]) != expected:
        raise EmbeddingsError(f"item embeddings {path} are {tuple(cache.matrix.shape[1:])} per item, but "
                              f"{backbone.base} takes {expected} ({expected[0]} item tokens x its LM hidden size): "
                              "they were made with another base model")
