"""LLaVA-NeXT with LaViC's item tokens: loading, 5-sub-image preprocessing, CLS embeddings, insertion, LoRA.

Module paths follow transformers 5.x: ``model.model.vision_tower`` (CLIP without a ``vision_model``
wrapper), ``model.model.multi_modal_projector``, ``model.model.language_model``, ``model.lm_head``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import torch
from PIL import Image

from lavic_ref import DEFAULT_BASE
from lavic_ref.prompts import ITEM_TOKENS, MISTRAL_CHAT_TEMPLATE
from reddit_amazon.cli_errors import one_line
from reddit_amazon.files import naming_write_failure, read_json
from reddit_amazon.images import rgb_image

log = logging.getLogger(__name__)

SUBIMAGES_PER_ITEM = 5
IGNORE_INDEX = -100

#: LoRA targets as regexes: a plain name list (``q_proj``) would match the vision tower and the LM alike.
VISION_LORA_TARGETS = (
    r".*vision_tower.*\.(q_proj|k_proj|v_proj|out_proj|fc1|fc2)|.*multi_modal_projector\.linear_[12]"
)
LANGUAGE_LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
LORA_RANK, LORA_ALPHA, LORA_DROPOUT = 8, 32, 0.1
#: Written beside every adapter we save: the base model it was trained on (name and weights fingerprint).
BASE_FILE = "lavic_base.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
#: Adapter roles and the module-name parts their LoRA weights sit under.
ROLE_MODULES = {"vision": ("vision_tower", "multi_modal_projector"), "language": ("language_model",)}


class BaseModelError(ValueError):
    """``--base`` is not a usable LLaVA-NeXT checkpoint."""


class AdapterError(ValueError):
    """An adapter folder that is not one, or does not fit the base model or the role it is given."""


@dataclass
class Backbone:
    model: Any  # LlavaNextForConditionalGeneration, possibly wrapped by peft
    processor: Any  # LlavaNextProcessor
    device: torch.device
    dtype: torch.dtype
    base: str
    fingerprint: str = ""  # of the base weights, before any adapter: see weights_fingerprint

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @cached_property
    def item_token_ids(self) -> torch.Tensor:
        """Ids of the 5 item tokens on the device, built once (every loss and generation batch reads them)."""
        return torch.tensor(self.tokenizer.convert_tokens_to_ids(list(ITEM_TOKENS)), device=self.device)


class DeviceError(ValueError):
    """``--device`` names a device that torch does not know or this machine does not have."""


def resolve_device(device: str | None) -> torch.device:
    """The torch device for ``device`` (cuda when available, else cpu, when unset), checked before any weights load."""
    if not device:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as error:
        raise DeviceError(f"device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)") from error
    if target.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r}: no CUDA device is available here (torch {torch.__version__}); "
                          "use cpu or leave the device unset")
    if target.type == "cuda" and target.index is not None and target.index >= torch.cuda.device_count():
        raise DeviceError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return target


def default_dtype(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def fix_five_subimages(config: Any, image_processor: Any) -> None:
    """One grid pinpoint of 2x2 crops: every image gives 1 base + 4 crops whatever its aspect ratio."""
    crop = image_processor.crop_size
    side = crop["height"] if isinstance(crop, dict) else crop.height
    pinpoints = [[2 * side, 2 * side]]
    image_processor.image_grid_pinpoints = pinpoints
    config.image_grid_pinpoints = pinpoints


def load_backbone(base: str = DEFAULT_BASE, *, device: str | None = None, dtype: torch.dtype | None = None,
                  processor: Any = None) -> Backbone:
    """Load a LLaVA-NeXT checkpoint (hub id or local folder) with the item tokens and the 5-sub-image grid.

    ``processor``: the one :func:`load_processor` gave for ``base`` before the model was needed, used instead of
    loading it again.
    """
    from transformers import LlavaNextForConditionalGeneration

    config = llava_next_config(base)
    target = resolve_device(device)
    dtype = dtype or default_dtype(target)
    if processor is None:
        processor = _processor(base, config)
    try:
        model = LlavaNextForConditionalGeneration.from_pretrained(base, config=config, dtype=dtype)
    except OSError as error:  # the config is there, the weights are not (a partial download, offline)
        raise BaseModelError(f"base model {base}: cannot load its weights: {one_line(error)}") from error
    fingerprint = weights_fingerprint(model)
    fix_five_subimages(model.config, processor.image_processor)
    tokenizer = processor.tokenizer
    if len(tokenizer) > cast(torch.nn.Embedding, model.get_input_embeddings()).num_embeddings:
        # Rows of item tokens are always overwritten by item embeddings, so their initial values do not matter.
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    # transformers wraps PreTrainedModel.to in functools.wraps, whose typeshed type does not bind self.
    model.to(target)  # type: ignore[arg-type]
    model.requires_grad_(False)
    return Backbone(model=model, processor=processor, device=target, dtype=dtype, base=str(base),
                    fingerprint=fingerprint)


def load_processor(base: str = DEFAULT_BASE):
    """The processor :func:`load_backbone` loads (item tokens included), without loading the model's weights:
    for checks before the model loads (its tokenizer); then give it to :func:`load_backbone`."""
    return _processor(base, llava_next_config(base))


def _processor(base: str, config: Any):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(base)
    except OSError as error:
        raise BaseModelError(f"base model {base}: cannot load its processor: {one_line(error)}") from error
    processor.tokenizer.add_tokens(list(ITEM_TOKENS), special_tokens=True)
    _give_chat_template(processor, config, base)
    return processor


def _give_chat_template(processor: Any, config: Any, base: str) -> None:
    """Give the tokenizer the chat template every prompt is wrapped in (:func:`~lavic_ref.prompts.chat_wrapping`):
    its own; else the processor's (a checkpoint's ``chat_template.json``, the older file, reaches only the
    processor); else, for a Mistral language model, llava-v1.6-mistral's ``[INST] … [/INST]``. Another language
    model without a template is refused before any weights load: wrapping its prompts in Mistral's format would
    train and evaluate it on a format it was never tuned on, without a word."""
    tokenizer = processor.tokenizer
    if tokenizer.chat_template:
        return
    if getattr(processor, "chat_template", None):
        tokenizer.chat_template = processor.chat_template
        return
    language_model = config.get_text_config().model_type
    if language_model != "mistral":
        raise BaseModelError(f"base model {base}: neither its tokenizer nor its processor has a chat template, and "
                             f"its language model is {language_model}, not Mistral (whose [INST] … [/INST] format "
                             "is used without one): add the model's chat template (chat_template.jinja) to the "
                             "checkpoint folder")
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE


def llava_next_config(base: str):
    """The checkpoint's config, refused unless it is LLaVA-NeXT (transformers would build a random default model)."""
    from transformers import AutoConfig

    local = Path(base).exists()
    if not local and _looks_like_path(base):
        raise BaseModelError(f"base model {base}: no such folder")
    try:
        config = AutoConfig.from_pretrained(base)
    except (OSError, ValueError) as error:
        where = "folder" if local else "Hugging Face Hub id (not a local folder)"
        raise BaseModelError(f"base model {base}: cannot read its config as a {where}: {one_line(error)}") from error
    if config.model_type != "llava_next":
        kind = ", ".join(config.architectures or []) or config.model_type
        raise BaseModelError(f"base model {base} is a {kind} checkpoint (model_type {config.model_type!r}), not "
                             f"LLaVA-NeXT (model_type 'llava_next'), e.g. {DEFAULT_BASE}")
    return config


def _looks_like_path(base: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is meant as a local folder."""
    return base.startswith(("/", ".", "~")) or "\\" in base or base.count("/") > 1


@torch.no_grad()
def weights_fingerprint(model: Any, values_per_tensor: int = 256) -> str:
    """Short hash of the parameter names, shapes and first values (in bf16): identifies a base model.

    Cheap (a few values per tensor, one transfer) and the same on a CPU in fp32 and on a GPU in bf16, so
    files made on one machine are recognised on another; two checkpoints of one architecture differ.
    """
    digest = hashlib.sha256()
    heads = []
    for name, param in model.named_parameters():
        digest.update(f"{name}:{tuple(param.shape)};".encode())
        heads.append(param.detach().reshape(-1)[:values_per_tensor].to(torch.bfloat16))
    digest.update(torch.cat(heads).cpu().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


#: Items whose image could not be decoded, so each is warned about once per process.
_UNDECODABLE: set[str] = set()


def decode_image(data: bytes | None, item_id: str) -> Image.Image:
    """RGB image from encoded bytes; 16-bit and float greyscale scaled to 8 bits, not clipped.

    Items without an image get a blank one (as the authors' code does), and so do items whose image cannot
    be decoded or holds over 40M pixels, with a warning naming the item.
    """
    if data:
        try:
            return rgb_image(data)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # Pillow's "undecodable"
            if item_id not in _UNDECODABLE:
                _UNDECODABLE.add(item_id)
                reason = "unknown format" if isinstance(error, Image.UnidentifiedImageError) else str(error)
                log.warning("item %s: its image cannot be decoded (%s); using a blank image instead", item_id,
                            reason or type(error).__name__)
    return Image.new("RGB", (336, 336), "white")


def subimage_pixels(processor: Any, images: Sequence[Image.Image]) -> torch.Tensor:
    """``(num_images, 5, C, H, W)`` pixel values: base image + 4 crops each."""
    pixels = processor.image_processor(list(images), return_tensors="pt")["pixel_values"]
    if pixels.shape[1] != SUBIMAGES_PER_ITEM:
        raise ValueError(f"expected {SUBIMAGES_PER_ITEM} sub-images per image, got {pixels.shape[1]}: "
                         "call fix_five_subimages on the image processor")
    return pixels


def inner_model(model: Any) -> Any:
    """The ``LlavaNextModel`` (vision tower, projector, LM) inside a plain or peft-wrapped model."""
    return model.get_base_model().model if hasattr(model, "get_base_model") else model.model


def cls_embeddings(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """``(N, 5, C, H, W)`` -> ``(N, 5, D_lm)``: the vision tower's CLS output of each sub-image, projected."""
    inner = inner_model(model)
    count, views = pixel_values.shape[:2]
    flat = pixel_values.flatten(0, 1).to(device=inner.vision_tower.device, dtype=inner.vision_tower.dtype)
    cls = inner.vision_tower(flat).last_hidden_state[:, 0]
    return inner.multi_modal_projector(cls).view(count, views, -1)


# --------------------------------------------------------------------------------------------
# Item tokens
# --------------------------------------------------------------------------------------------


def insert_item_embeddings(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, item_token_ids: torch.Tensor, item_embeddings: torch.Tensor
) -> torch.Tensor:
    """Replace the embeddings of item-token positions, in sequence order, by ``item_embeddings``.

    ``item_embeddings`` is ``(num_items_in_batch, 5, D)`` in the order the items appear (row-major over the
    batch); one ``masked_scatter`` fills every position at once.
    """
    slots, width = item_token_ids.numel(), inputs_embeds.shape[-1]
    if item_embeddings.dim() != 3 or item_embeddings.shape[1:] != (slots, width):
        raise ValueError(f"item embeddings of shape {tuple(item_embeddings.shape[1:])} per item, but the model "
                         f"takes {slots} item tokens of width {width} (its LM hidden size): were they made with "
                         "another base model?")
    mask = torch.isin(input_ids, item_token_ids)
    expected = int(mask.sum())
    if expected != item_embeddings.shape[0] * item_embeddings.shape[1]:
        raise ValueError(f"{expected} item-token positions but {item_embeddings.shape[0]} items x "
                         f"{item_embeddings.shape[1]} embeddings")
    values = item_embeddings.reshape(-1, inputs_embeds.shape[-1]).to(device=inputs_embeds.device,
                                                                     dtype=inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), values)


def embed_inputs(backbone: Backbone, input_ids: torch.Tensor, item_embeddings: torch.Tensor | None) -> torch.Tensor:
    """The LM's input embeddings of ``input_ids`` (on any device), item-token positions filled from
    ``item_embeddings``."""
    embedding = backbone.model.get_input_embeddings()
    input_ids = input_ids.to(embedding.weight.device)
    embeds = embedding(input_ids)
    if item_embeddings is None or item_embeddings.numel() == 0:
        return embeds
    return insert_item_embeddings(embeds, input_ids, backbone.item_token_ids, item_embeddings)


def target_loss(model: Any, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled (target) tokens of a left-padded batch.

    Targets sit at the end of every row, so only the last positions go through the LM head
    (``logits_to_keep``): the full-vocabulary logits of the prompt are never materialised.
    """
    labelled = (labels != IGNORE_INDEX).any(dim=0).nonzero()  # labels stay on the CPU: no device sync
    keep = labels.shape[1] - int(labelled[0]) + 1 if labelled.numel() else 1
    # use_cache=False: a training forward has no use for a KV cache (HF builds one by default).
    logits = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, logits_to_keep=keep,
                   use_cache=False).logits
    targets = labels[:, -keep:].to(logits.device)
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten(),
                                             ignore_index=IGNORE_INDEX)


# --------------------------------------------------------------------------------------------
# Token sequences
# --------------------------------------------------------------------------------------------


@dataclass
class TokenBatch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None

    def training_labels(self) -> torch.Tensor:
        """``labels``, which a batch padded for training has (:func:`pad_batch` given ``labels``)."""
        if self.labels is None:
            raise ValueError("this batch was padded without labels: it cannot be trained on")
        return self.labels


def padded_width(length: int, multiple_of: int) -> int:
    """The width :func:`pad_batch` gives a batch whose longest sequence has ``length`` tokens."""
    return -(-length // multiple_of) * multiple_of


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, *, labels: Sequence[Sequence[int]] | None = None,
    left: bool = True, multiple_of: int = 1,
) -> TokenBatch:
    """Pad token lists to one tensor (left padding for generation), its width a multiple of ``multiple_of``.

    Padding to a few widths lets CUDA graphs recorded for one width replay for every batch of that width.
    """
    width = padded_width(max(len(s) for s in sequences), multiple_of)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    label_tensor = torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long) if labels is not None else None
    for row, sequence in enumerate(sequences):
        span = slice(width - len(sequence), width) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
        if labels is not None and label_tensor is not None:
            label_tensor[row, span] = torch.tensor(labels[row], dtype=torch.long)
    return TokenBatch(ids, mask, label_tensor)


# --------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------


def lora_config(targets: str):
    from peft import LoraConfig

    return LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT, target_modules=targets,
                      bias="none")


def attach_adapter(backbone: Backbone, path: str | os.PathLike, *, role: str | None = None) -> None:
    """Load a saved LoRA adapter onto the backbone, frozen, beside any adapter attached before (all stay active).

    The adapters stay unmerged, as they were trained (fp32 LoRA weights beside the base weights): merged into
    bf16 weights, a LoRA update much smaller than the weight it is added to is rounded away, so the model
    evaluated would not be the model trained. ``role`` ("vision" or "language") refuses an adapter whose LoRA
    weights sit elsewhere; an adapter saved by this package for another base model is refused too.
    """
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    folder = resolve_adapter_dir(path)
    if role is not None:
        check_adapter_role(folder, role)
    check_adapter_base(folder, backbone)
    if isinstance(backbone.model, PeftModel):
        backbone.model.load_adapter(str(folder), adapter_name=f"adapter{len(backbone.model.peft_config)}")
        # peft's PeftModel.set_adapter takes one name; its LoRA model (a BaseTuner) activates several at once.
        tuner = cast(BaseTuner, backbone.model.base_model)
        tuner.set_adapter(list(backbone.model.peft_config), inference_mode=True)
    else:
        backbone.model = PeftModel.from_pretrained(backbone.model, str(folder), adapter_name="adapter0")
    backbone.model.to(backbone.device)


def resolve_adapter_dir(path: str | os.PathLike) -> Path:
    """The adapter folder itself, or the ``best/`` adapter of a training output folder."""
    folder = Path(path)
    if (folder / ADAPTER_CONFIG).is_file():
        return folder
    if (folder / "best" / ADAPTER_CONFIG).is_file():
        return folder / "best"
    raise AdapterError(f"{folder} is not a LoRA adapter folder (no {ADAPTER_CONFIG}, nor a best/ folder with one)")


def adapter_role(folder: Path) -> str:
    """"vision" or "language": where the adapter's LoRA weights sit ("other" or "mixed" otherwise)."""
    from safetensors import safe_open

    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as handle:
        roles = {_module_role(key) for key in handle.keys()}
    return roles.pop() if len(roles) == 1 else "mixed" if roles else "other"


def _module_role(name: str) -> str:
    for role, parts in ROLE_MODULES.items():
        if any(f".{part}." in name for part in parts):
            return role
    return "other"


def check_adapter_role(folder: Path, role: str) -> None:
    if not (folder / ADAPTER_WEIGHTS).is_file():
        return  # a .bin adapter: peft reads it, its names are not checked
    found = adapter_role(folder)
    if found != role:
        raise AdapterError(f"{folder} is an adapter for {_ROLE_NAMES[found]}, but it is given as one for "
                           f"{_ROLE_NAMES[role]}")


_ROLE_NAMES = {"vision": "the vision tower and projector (from `lavic-ref distill`)",
               "language": "the language model (from `lavic-ref finetune`)",
               "mixed": "both the vision tower and the language model", "other": "other modules"}


def save_adapter(backbone: Backbone, folder: Path, trained_with: dict[str, Any] | None = None) -> None:
    """The peft adapter plus :data:`BASE_FILE`, so loading it onto another base model can be refused.

    ``trained_with`` (the training run's settings) lets the plugin refuse inputs other than those it was trained on.
    """
    record: dict[str, Any] = {"base": backbone.base, "fingerprint": backbone.fingerprint}
    if trained_with:
        record["trained_with"] = trained_with
    with naming_write_failure(folder):  # a full disk: peft's and safetensors' errors name no file
        backbone.model.save_pretrained(folder)
        _name_base_as_published(folder, backbone.base)
        (folder / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def _name_base_as_published(folder: Path, base: str) -> None:
    """peft's files of a saved adapter with the base model named as published (peft names ``base`` as given, the
    absolute path of a local checkpoint included): ``base_model_name_or_path`` in ``adapter_config.json`` by
    :func:`~lavic_ref.card.shown_base`; ``base_model`` and the ``base_model:adapter:`` tag in the YAML of
    ``README.md`` by the Hub id, or not at all (the Hub takes only a model id there). Our adapters' base is checked
    by their :data:`BASE_FILE`, which keeps ``base`` as given: ``adapter_config.json``'s name is read only for an
    adapter without one (see :func:`check_adapter_base`)."""
    from huggingface_hub import ModelCard

    from lavic_ref.card import published_base, shown_base

    config = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = shown_base(base)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    readme = folder / "README.md"
    if not readme.is_file():
        return
    card = ModelCard.load(readme)
    hub_id = published_base(base)
    card.data.base_model = hub_id
    tags = [tag for tag in card.data.tags or [] if not tag.startswith("base_model:")]
    card.data.tags = [*tags, f"base_model:adapter:{hub_id}"] if hub_id else tags
    card.save(readme)


def saved_base(folder: Path) -> dict[str, Any] | None:
    """What :func:`save_adapter` recorded of the base model (``base``, ``fingerprint``); None for another adapter.
    A damaged record is a :class:`~reddit_amazon.files.DamagedFileError`: without it the adapter cannot be checked
    against the base model, nor its inputs against those it was trained on."""
    record = Path(folder) / BASE_FILE
    if not record.is_file():
        return None
    return read_json(record, remedy="it records what the adapter was trained on: copy the adapter folder again "
                                    "from where it came, or rerun the training that wrote it")


def check_adapter_base(folder: Path, backbone: Backbone) -> None:
    """Refuse an adapter recorded for other base weights; warn where only differing base names can be compared."""
    saved = saved_base(folder)
    if saved is not None:
        if saved.get("fingerprint") and backbone.fingerprint and saved["fingerprint"] != backbone.fingerprint:
            raise AdapterError(f"{folder} was trained on base model {saved.get('base')} (weights "
                               f"{saved['fingerprint']}), not on {backbone.base} (weights {backbone.fingerprint})")
        return
    config = read_json(folder / ADAPTER_CONFIG, remedy="it is peft's record of the adapter: copy the adapter folder "
                                                      "again from where it came, or rerun the training that wrote it")
    trained_on = config.get("base_model_name_or_path")
    if trained_on and not same_base_name(trained_on, backbone.base):
        warnings.warn(f"{folder} names base model {trained_on}, not {backbone.base}; it has no {BASE_FILE} to "
                      "check the weights with: make sure it was trained on this base", stacklevel=3)


def same_base_name(first: str, second: str) -> bool:
    """Whether two base model names may be the same model: local folders by resolved path, hub ids by name."""
    paths = [Path(name).expanduser() for name in (first, second)]
    if all(path.exists() for path in paths):
        return paths[0].resolve() == paths[1].resolve()
    return first == second or any(path.exists() for path in paths)  # a hub id vs a local copy: not comparable


def new_adapter(backbone: Backbone, targets: str, *, seed: int = 0) -> None:
    """A fresh LoRA adapter whose initial weights depend on ``seed`` only.

    peft draws the LoRA A matrices from torch's global RNG on the CPU: a forked one here, so the
    training that follows draws its dropout masks from its own seeded stream.
    """
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone.model = get_peft_model(backbone.model, lora_config(targets))  # LoRA weights on their layers' device


def compile_language_layers(model: Any, mode: str | None = None, dynamic: bool | None = None) -> None:
    """``torch.compile`` each LM decoder layer in place (fewer, fused kernels: a batch-1 step is launch-bound).

    One graph serves all layers, so compiling takes about a minute on a GPU (the whole decoder stack as one
    graph did not finish compiling in 3 minutes on an H100). With ``dynamic=None`` the layers recompile once
    for a new prompt length, after which lengths are dynamic (``dynamic=True`` starts there). Numerics are
    those of the eager layers up to kernel fusion. ``mode`` is torch.compile's (``"reduce-overhead"`` adds
    CUDA graphs on a GPU).
    """
    for layer in inner_model(model).language_model.layers:
        layer.compile(mode=mode, dynamic=dynamic)


def adapter_fingerprint(path: str | os.PathLike | None) -> str:
    """Short hash of an adapter's weights ("none" without one): names embedding caches."""
    if path is None:
        return "none"
    digest = hashlib.sha256()
    for file in sorted(Path(path).glob("adapter_*")):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:16]
