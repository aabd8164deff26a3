"""What a recommender plugin sees and must provide.

A recommender is any object with ``recommend(examples) -> list[str]`` (one free-form text per
example; the harness, not the plugin, parses the recommended ID out of it). No base class is needed.

A plugin that can order the candidates may also define ``rank(examples) -> list[list[str]]``
(item ids best-first); the harness then calls ``rank`` instead of ``recommend``, takes the first id
as the recommendation, and additionally reports Recall@k / NDCG@k.

Optional attributes the harness reads: ``batch_size`` (examples per call, default 16), ``name``
(shown in reports) and ``uses_images`` (default True; False: the candidates come without their image
bytes, which are then never read into memory, a large catalog's images being many GB).

Each :class:`Candidate` carries its item's row of the dataset's ``items`` config (``reddit_amazon.schema.Item``):
``title``, ``description``, ``store``, ``main_category``, ``categories``, ``features``, ``details`` (a dict,
parsed from the row's JSON text when read), ``parent_asin``, ``image_urls``, ``image_description`` and the image.
A field the dataset leaves out or null (an imported copy of the authors' release has titles, image URLs and image
descriptions only) is empty: ``""``, ``()`` or ``{}``. One candidate object stands for its item in every example.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from reddit_amazon.files import write_atomic
from reddit_amazon.schema import Turn

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

DEFAULT_BATCH_SIZE = 16

_IMAGE_DIR_ENV = "REDDIT_AMAZON_IMAGE_DIR"


def _image_dir() -> Path:
    if os.environ.get(_IMAGE_DIR_ENV):
        folder = Path(os.environ[_IMAGE_DIR_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    # The temp dir is every user's: by default each has a folder of its own that no other can write into.
    user = f"-{os.getuid()}" if hasattr(os, "getuid") else ""
    folder = Path(tempfile.gettempdir()) / f"reddit-amazon-images{user}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if user and folder.stat().st_uid != os.getuid():  # made first by someone else, who could swap its files
        raise PermissionError(f"{folder} belongs to another user: set ${_IMAGE_DIR_ENV} to a folder of your own")
    return folder


@dataclass(frozen=True)
class Candidate:
    """One candidate item. ``image_bytes`` is the encoded main image (JPEG/PNG) or None (always None for a
    recommender that says ``uses_images = False``). The fields after it are the item's metadata, as the
    ``items`` config has them, given by name only (``Candidate(item_id, title, description, image_bytes)`` keeps
    its meaning); empty where the dataset has none."""

    item_id: str
    title: str
    description: str = ""
    image_bytes: bytes | None = field(default=None, repr=False)
    # Keyword-only by field(kw_only=True), not a KW_ONLY marker: typing.get_type_hints fails on one under
    # Python 3.10 with postponed annotations.
    store: str = field(default="", kw_only=True)
    main_category: str = field(default="", kw_only=True)
    categories: tuple[str, ...] = field(default=(), kw_only=True)
    features: tuple[str, ...] = field(default=(), repr=False, kw_only=True)
    #: Amazon's "details" dict as the dataset stores it, JSON text; :attr:`details` parses it.
    details_json: str = field(default="", repr=False, kw_only=True)
    parent_asin: str = field(default="", kw_only=True)
    image_urls: tuple[str, ...] = field(default=(), repr=False, kw_only=True)
    image_description: str = field(default="", repr=False, kw_only=True)  # a text description of the main image

    @property
    def details(self) -> dict[str, Any]:
        """Amazon's "details" of the item (``{"Brand": ..., "Color": ...}``, keys vary by category), parsed anew on
        each read (a dict of its own: the candidate is shared by every example that lists it); ``{}`` where the
        dataset has none. Text that is not a JSON object raises a ValueError naming the item."""
        if not self.details_json.strip():
            return {}
        import orjson

        try:
            details = orjson.loads(self.details_json)
        except orjson.JSONDecodeError as error:
            raise ValueError(f"item {self.item_id}: details is not valid JSON ({error})") from None
        if not isinstance(details, dict):
            raise ValueError(f"item {self.item_id}: details is JSON {type(details).__name__}, not an object")
        return details

    @property
    def image(self) -> PILImage | None:
        """The main image decoded as an RGB PIL image (None when the item has no image); 16-bit and float
        greyscale are scaled to 8 bits as ``lavic-ref`` does (Pillow's own convert clips them to white). An image
        of over 40M pixels raises ``reddit_amazon.images.ImageRejected`` (a ValueError) before it is decoded."""
        if self.image_bytes is None:
            return None
        from reddit_amazon.images import rgb_image

        return rgb_image(self.image_bytes)

    @property
    def image_path(self) -> Path | None:
        """The main image as a file (content-addressed under ``$REDDIT_AMAZON_IMAGE_DIR`` or the temp dir)."""
        if self.image_bytes is None:
            return None
        from reddit_amazon.images import image_digest

        digest = image_digest(self.image_bytes)
        # The id comes from the dataset (maybe someone else's): no "/", "..", NUL or newline may reach the path.
        name = re.sub(r"[^A-Za-z0-9_-]", "_", self.item_id)[:64]
        path = _image_dir() / f"{name}-{digest}{_image_suffix(self.image_bytes)}"
        if not path.is_file() or path.read_bytes() != self.image_bytes:  # a damaged or planted file is replaced
            write_atomic(path, self.image_bytes)
        return path


def image_mime(data: bytes) -> str:
    """The MIME type of encoded image bytes, from their first bytes: PNG, WebP, GIF, else JPEG."""
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"GIF8"):
        return "image/gif"
    return "image/jpeg"


def _image_suffix(data: bytes) -> str:
    return {"image/png": ".png", "image/webp": ".webp", "image/gif": ".gif"}.get(image_mime(data), ".jpg")


@dataclass(frozen=True)
class Example:
    """One conversation to recommend for. The ground truth is never part of it."""

    example_id: str
    domain: str
    context: str  # the paper's rendering: <submission>…</submission>\n<comment>…</comment>\n…
    turns: tuple[Turn, ...]
    context_items: tuple[str, ...]
    candidates: tuple[Candidate, ...]


@runtime_checkable
class Recommender(Protocol):
    def recommend(self, examples: Sequence[Example]) -> list[str]:
        """One output text per example, in order. The harness parses the first ASIN-shaped ID."""
        ...


@runtime_checkable
class RankingRecommender(Protocol):
    def rank(self, examples: Sequence[Example]) -> list[list[str]]:
        """Item ids best-first per example (usually a permutation of its candidates)."""
        ...
