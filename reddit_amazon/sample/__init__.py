"""The bundled sample: a small generated world (inputs) and the dataset built from it.

``sample_dataset_path()`` is the folder of the ready-built sample dataset shipped in the package,
so loading and benchmarking work on a fresh machine with nothing built or downloaded::

    from reddit_amazon.sample import load_sample
    fashion = load_sample("fashion")          # DatasetDict with train/validation/test
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

SAMPLE_DIR = Path(__file__).resolve().parent
SAMPLE_DATASET = SAMPLE_DIR / "reddit-amazon"
#: How records name the bundled sample dataset: its place in the package, the same in every install.
SAMPLE_DATASET_ID = "reddit_amazon/sample/reddit-amazon"


def sample_dataset_path() -> Path:
    """Folder of the bundled sample dataset (loadable with ``datasets.load_dataset(path, config)``)."""
    if not (SAMPLE_DATASET / "manifest.json").is_file():
        raise FileNotFoundError(
            f"the bundled sample dataset is missing from {SAMPLE_DATASET}; "
            "regenerate it with `python -m reddit_amazon.sample.make_sample`"
        )
    return SAMPLE_DATASET


@overload
def load_sample(config: str = "fashion", split: None = None) -> DatasetDict: ...
@overload
def load_sample(config: str, split: str) -> Dataset: ...
@overload
def load_sample(*, split: str) -> Dataset: ...
def load_sample(config: str = "fashion", split: str | None = None) -> DatasetDict | Dataset:
    """``datasets.load_dataset`` on the bundled sample: one call, no network; every split of ``config`` (a
    ``DatasetDict``), or one ``Dataset`` with ``split``."""
    from reddit_amazon.dataset_folder import load

    return load(config, sample_dataset_path(), split=split)
