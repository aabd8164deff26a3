"""`lavic-ref`: the LaViC reference pipeline, one command per stage.

describe -> distill -> embed -> finetune, then ``benchmark run --model lavic``. The long stages resume:
``describe`` skips cached descriptions, ``distill``/``finetune`` continue from ``<out>/last`` when it was
written with the same settings (and refuse it otherwise), ``embed`` from the items it checkpointed.
"""

from __future__ import annotations

import functools
import os
import shlex
from collections.abc import Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from lavic_ref import DEFAULT_BASE
from lavic_ref.card import card_describes, hardware_name, published_base, render_from_inputs, write_model_card
from lavic_ref.prompts import MAX_DESCRIPTION_TOKENS
from reddit_amazon import __version__
from reddit_amazon.cli_paths import PATH_OR_NAME, UserPath
from reddit_amazon.cli_seed import SEED, SEED_RANGE_HELP
from reddit_amazon.hub_push import push_options
from reddit_amazon.progress import log_line
from reddit_amazon.schema import DOMAINS

if TYPE_CHECKING:
    from lavic_ref.data import RecommendationInstance
    from lavic_ref.embed import ItemEmbeddings
    from reddit_amazon.schema import Item

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _common(function):
    function = _file_errors_as_lines(_quiet_when_asked(function))
    options = [
        click.option("--dataset", type=PATH_OR_NAME, default=None, callback=_dataset_there,
                     help="Dataset folder or Hub id [default: the bundled sample]."),
        click.option("--domain", "domains", multiple=True, type=click.Choice(DOMAINS), default=DOMAINS,
                     callback=lambda ctx, param, value: tuple(dict.fromkeys(value)),  # a repeat would train twice
                     help="Domain(s) to use (repeatable) [default: all]."),
        click.option("--base", type=PATH_OR_NAME, default=DEFAULT_BASE, show_default=True,
                     help="LLaVA-NeXT checkpoint: hub id or local folder."),
        click.option("--device", default=None, help="torch device [default: cuda when available, else cpu]."),
        click.option("--quiet", is_flag=True, help="No progress bars (results still go to stdout, log lines and "
                                                   "errors to stderr)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _quiet_when_asked(command):
    """``command`` run without progress bars when given ``quiet=True``."""
    @functools.wraps(command)
    def run(*args, quiet: bool, **kwargs):
        from reddit_amazon.progress import quiet as without_bars

        with without_bars(quiet):
            return command(*args, **kwargs)

    return run


def _file_errors_as_lines(command):
    """``command`` with an OSError (a full disk naming the file, an output folder in the way) or a damaged file the
    toolkit wrote (a checkpoint's state, an adapter's record) as its one ``Error:`` line, as in the other CLIs, not a
    traceback."""
    @functools.wraps(command)
    def run(*args, **kwargs):
        from reddit_amazon.cli_errors import user_errors
        from reddit_amazon.files import DamagedFileError

        with user_errors(OSError, DamagedFileError):
            return command(*args, **kwargs)

    return run


def _dataset_there(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A dataset folder that is not there fails as a bad option, before any model loads."""
    from reddit_amazon.dataset_folder import refuse_missing_local_path

    try:
        if value is not None:
            refuse_missing_local_path(value)
    except FileNotFoundError as error:
        raise click.BadParameter(str(error)) from None
    return value


def _training_options(epochs: int, batch_size: int):
    options = [
        click.option("--out", type=UserPath(path_type=Path), required=True,
                     help="Output folder: best/ (adapter), last/ (resumable checkpoint), history.json."),
        click.option("--epochs", type=click.IntRange(1), default=epochs, show_default=True,
                     help="best/ keeps the epoch of lowest validation loss (the paper trains up to 5: docs/lavic.md)."),
        click.option("--batch-size", type=click.IntRange(1), default=batch_size, show_default=True,
                     help="Examples per forward pass (times --grad-accum per optimizer step)."),
        click.option("--grad-accum", type=click.IntRange(1), default=1, show_default=True,
                     help="Batches per optimizer step."),
        click.option("--lr", type=float, default=5e-5, show_default=True, help="AdamW learning rate."),
        click.option("--weight-decay", type=float, default=1e-5, show_default=True, help="AdamW weight decay."),
        click.option("--max-grad-norm", type=click.FloatRange(0), default=1.0, show_default=True,
                     help="Clip the gradient's norm to this before each optimizer step, as the authors' code does "
                          "(the paper does not say); 0 disables clipping."),
        click.option("--max-steps", type=click.IntRange(1), default=None,
                     help="Optimizer steps per epoch at most (smoke runs)."),
        click.option("--save-every", type=click.IntRange(1), default=500, show_default=True,
                     help="Checkpoint to <out>/last every N optimizer steps."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", default=True, show_default=True,
                     help="Recompute activations in the backward pass: less GPU memory, slower steps."),
        click.option("--compile/--no-compile", "compile_layers", default=False, show_default=True,
                     help="torch.compile the LM decoder layers (GPU; the first steps compile for a minute or more)."),
        click.option("--cuda-graphs/--no-cuda-graphs", default=False, show_default=True,
                     help="Compiled LM layers replay CUDA graphs (torch.compile mode reduce-overhead; implies "
                          "--compile, needs --no-gradient-checkpointing and --grad-accum 1); batches are left-padded "
                          "to a multiple of 128 tokens so each width is recorded once."),
        click.option("--resume/--no-resume", default=True, show_default=True,
                     help="Continue from <out>/last when it exists (it must have the same settings; more --epochs "
                          "is fine). --no-resume starts over."),
        click.option("--seed", type=SEED, default=0, show_default=True,
                     help=f"Seeds the LoRA initialisation, dropout and shuffling ({SEED_RANGE_HELP}: torch takes "
                          "no more than 64 bits)."),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _train_config(out, epochs, batch_size, grad_accum, lr, weight_decay, max_grad_norm, max_steps, save_every,
                  gradient_checkpointing, compile_layers, cuda_graphs, seed, resume):
    del resume  # passed to the stage, not part of the configuration
    from lavic_ref.training import TrainConfig

    if cuda_graphs and gradient_checkpointing:
        raise click.UsageError("--cuda-graphs needs --no-gradient-checkpointing: checkpointing recomputes the "
                               "compiled layers outside the recorded graphs")
    if cuda_graphs and grad_accum > 1:
        raise click.UsageError("--cuda-graphs needs --grad-accum 1: the next batch's graph replay would overwrite "
                               "the gradients before they are summed (use a larger --batch-size instead)")
    return TrainConfig(output_dir=out, epochs=epochs, batch_size=batch_size, learning_rate=lr,
                       weight_decay=weight_decay, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                       max_steps=max_steps, save_every=save_every,
                       seed=seed, gradient_checkpointing=gradient_checkpointing, compile_layers=compile_layers,
                       cuda_graphs=cuda_graphs)


def _fingerprint_of(dataset: str | None) -> str | None:
    """The training dataset's content fingerprint (the card tells results on other data apart), if known."""
    from benchmark.data import resolve_dataset

    return resolve_dataset(dataset).fingerprint


def _load_backbone(base: str, device: str | None, processor=None):
    from lavic_ref.model import BaseModelError, DeviceError, load_backbone

    try:
        return load_backbone(base, device=device, processor=processor)
    except (BaseModelError, DeviceError) as error:
        raise click.ClickException(str(error)) from error


def _load_processor(base: str):
    from lavic_ref.model import BaseModelError, load_processor

    try:
        return load_processor(base)
    except BaseModelError as error:
        raise click.ClickException(str(error)) from error


def _take_lock(held: ExitStack, lock: AbstractContextManager[None]) -> None:
    """Hold ``lock`` (describe's cache, embed's folder) until ``held`` closes. Taken before the model loads: a
    second run is refused in one line at once, not after minutes of loading a 7B model."""
    from reddit_amazon.files import FolderBusyError

    try:
        held.enter_context(lock)
    except FolderBusyError as error:
        raise click.ClickException(str(error)) from None


def _attach(backbone, path: Path, role: str) -> None:
    from lavic_ref.model import AdapterError, attach_adapter

    try:
        attach_adapter(backbone, path, role=role)
    except AdapterError as error:
        raise click.ClickException(str(error)) from error


def _train(run, *args, **kwargs):
    """A training stage, its checkpoint refused without a traceback when its settings differ."""
    from lavic_ref.training import CheckpointError

    try:
        return run(*args, **kwargs)
    except CheckpointError as error:
        raise click.ClickException(str(error)) from error


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="lavic-ref")
def cli() -> None:
    """LaViC reference model on LLaVA-NeXT (describe, distill, embed, finetune, card, push).

    \b
    Examples (the bundled sample, a local tiny or real checkpoint):
      lavic-ref describe --out runs/lavic/descriptions.jsonl
      lavic-ref distill --descriptions runs/lavic/descriptions.jsonl --out runs/lavic/distill
      lavic-ref embed --distill-adapter runs/lavic/distill/best --out runs/lavic
      lavic-ref finetune --embeddings runs/lavic/item_embeddings-*.safetensors --out runs/lavic/rec
      benchmark run --model lavic --out runs/lavic/test \\
          --model-args distill_adapter=runs/lavic/distill/best,rec_adapter=runs/lavic/rec/best
    """


def main() -> None:
    from reddit_amazon.cli_errors import run_cli

    run_cli(cli, "lavic-ref")


@cli.command()
@_common
@click.option("--out", type=UserPath(path_type=Path), required=True, help="JSONL cache of descriptions.")
@click.option("--batch-size", type=click.IntRange(1), default=8, show_default=True,
              help="Images described per generate call.")
@click.option("--max-new-tokens", type=click.IntRange(1), default=MAX_DESCRIPTION_TOKENS, show_default=True,
              help="Longest description generated, in tokens.")
@click.option("--regenerate", is_flag=True, help="Generate even where the dataset ships image_description.")
def describe(dataset, domains, base, device, out, batch_size, max_new_tokens, regenerate) -> None:
    """Describe each item image from its full image tokens (Table 10 prompt, greedy).

    Resumable: descriptions already in --out are kept. Shipped descriptions are reused (and written to --out)
    unless --regenerate.

    \b
    Example:
      lavic-ref describe --dataset ./reddit-amazon --out runs/lavic/descriptions.jsonl --batch-size 16
    """
    from lavic_ref.data import load_items
    from lavic_ref.describe import describe_items_holding_lock, describe_lock

    items = load_items(dataset, domains)
    imageless = _count_imageless(items)
    if items and imageless == len(items):
        raise click.ClickException(f"{_imageless_text(imageless, len(items), domains)}: nothing to describe "
                                   f"({NO_IMAGES_HINT})")
    with ExitStack() as held:
        _take_lock(held, describe_lock(out))
        backbone = _load_backbone(base, device)
        if imageless:  # once the base has loaded: a wrong --base is the one line it gets
            log_line(f"{_imageless_text(imageless, len(items), domains)}: not described (distill cannot use them; "
                     "embed gives each a blank image)")
        try:
            descriptions = describe_items_holding_lock(backbone, items.values(), out, batch_size=batch_size,
                                                       max_new_tokens=max_new_tokens, regenerate=regenerate)
        except ValueError as error:  # a corrupt cache, or one another base model wrote
            raise click.ClickException(str(error)) from None
    click.echo(f"{len(descriptions)} descriptions in {out}")


#: How to get item images where a dataset has none.
NO_IMAGES_HINT = ("an import of the LaViC authors' release holds no item images, nor titles: `reddit-amazon build` "
                  "makes a dataset with them")


def _count_imageless(items: dict[str, Item]) -> int:
    return sum(1 for item in items.values() if item.image is None)


def _imageless_text(imageless: int, total: int, domains: Sequence[str]) -> str:
    where = ", ".join(domains)
    if imageless == total:
        return f"none of the {total:,} items of {where} has an image"
    return f"{imageless:,} of the {total:,} items of {where} have no image"


@cli.command()
@_common
@click.option("--descriptions", type=UserPath(exists=True, dir_okay=False, path_type=Path), default=None,
              help="JSONL from `lavic-ref describe` [default: the dataset's image_description].")
@click.option("--validation-size", type=click.IntRange(0), default=512, show_default=True,
              help="Items held out for the validation loss (at most a fifth).")
@_training_options(epochs=2, batch_size=4)
def distill(dataset, domains, base, device, descriptions, validation_size, **training) -> None:
    """Self-distillation: LoRA on the vision tower + projector so 5 CLS embeddings reproduce the description.

    \b
    Example:
      lavic-ref distill --descriptions runs/lavic/descriptions.jsonl --out runs/lavic/distill --epochs 2
    """
    from lavic_ref.data import load_items
    from lavic_ref.describe import check_generated_by, read_cache
    from lavic_ref.distill import distill as run_distill
    from lavic_ref.distill import distill_examples

    config = _train_config(**training)
    items = load_items(dataset, domains)
    texts = {i.item_id: i.image_description for i in items.values() if i.image_description}
    if descriptions:
        texts.update(read_cache(descriptions))
    examples = distill_examples(items, texts)
    imageless = _count_imageless(items)
    if items and imageless == len(items):
        raise click.ClickException(f"{_imageless_text(imageless, len(items), domains)}: nothing to distill "
                                   f"({NO_IMAGES_HINT})")
    if not examples:
        raise click.ClickException("no item has both an image and a description: run `lavic-ref describe` first")
    backbone = _load_backbone(base, device)
    if descriptions:
        try:
            check_generated_by(descriptions, backbone)
        except ValueError as error:
            raise click.ClickException(str(error)) from None
    result = _train(run_distill, backbone, examples, config, validation_size=validation_size,
                    resume=training["resume"], settings={"domains": list(domains)})
    click.echo(f"best adapter: {result.best_dir} (validation loss {result.best_val_loss:.4f})")


class LocalOrHubPath(click.ParamType):
    """A local path as ``path`` checks it, or, where no local path of that name exists, a Hub model repo `lavic-ref
    push` wrote (``owner/name[@revision]``): the local copy of its file for ``option`` (see
    :func:`lavic_ref.publish.local_or_hub`)."""

    name = "path"

    def __init__(self, option: str, path: click.Path):
        self.option = option
        self.path = path

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from lavic_ref.publish import local_or_hub

        try:
            located = local_or_hub(str(value), self.option)
        except FileNotFoundError as error:
            self.fail(str(error), param, ctx)
        return self.path.convert(located.path, param, ctx)


@cli.command()
@_common
@click.option("--distill-adapter", default=None,
              type=LocalOrHubPath("distill_adapter", UserPath(exists=True, file_okay=False, path_type=Path)),
              help="Vision LoRA from `lavic-ref distill`: its best/ folder (or the --out folder holding it), or a "
                   "Hub repo `lavic-ref push` wrote (owner/name[@revision]: its distill/).")
@click.option("--no-distill", is_flag=True, help="Ablation: CLS embeddings of the base vision tower.")
@click.option("--out", type=UserPath(file_okay=False, path_type=Path), required=True,
              help="Folder for item_embeddings-<base hash>-<adapter hash>.safetensors.")
@click.option("--batch-size", type=click.IntRange(1), default=16, show_default=True,
              help="Items embedded per forward pass.")
@click.option("--recompute", is_flag=True,
              help="Embed every item again, even those the file in --out already holds from the same weights, "
                   "adapter, settings and image.")
def embed(dataset, domains, base, device, distill_adapter, no_distill, out, batch_size, recompute) -> None:
    """Compute each item's 5 embeddings once for the whole catalog (safetensors, keyed by item id).

    An item the file in --out already holds, made from the same base weights, adapter, settings (dtype, image
    processor) and image bytes, is reused, not embedded again; --recompute embeds every item again.

    \b
    Examples:
      lavic-ref embed --distill-adapter runs/lavic/distill/best --out runs/lavic
      lavic-ref embed --no-distill --out runs/lavic-ablation      # Table 7: no self-distillation
    """
    from lavic_ref.data import load_items
    from lavic_ref.embed import embed_catalog_holding_lock, embed_lock
    from lavic_ref.model import AdapterError, resolve_adapter_dir

    if bool(distill_adapter) == no_distill:
        raise click.UsageError("give exactly one of --distill-adapter or --no-distill")
    try:
        distill_adapter = resolve_adapter_dir(distill_adapter) if distill_adapter else None
    except AdapterError as error:
        raise click.ClickException(str(error)) from error
    items = load_items(dataset, domains)
    imageless = _count_imageless(items)
    with ExitStack() as held:
        _take_lock(held, embed_lock(out))
        backbone = _load_backbone(base, device)
        if imageless:  # once the base has loaded: a wrong --base is the one line it gets
            log_line(f"{_imageless_text(imageless, len(items), domains)}: each is embedded from a blank white image, "
                     "as the authors' code does, so all of theirs are alike"
                     + (f" ({NO_IMAGES_HINT})" if imageless == len(items) else ""))
        if distill_adapter:
            _attach(backbone, distill_adapter, "vision")
        path = embed_catalog_holding_lock(backbone, items.values(), out, adapter=distill_adapter,
                                          batch_size=batch_size, recompute=recompute)
    click.echo(str(path))


@cli.command()
@_common
@click.option("--embeddings", default=None,
              type=LocalOrHubPath("item_embeddings", UserPath(exists=True, dir_okay=False, path_type=Path)),
              help="Item embeddings from `lavic-ref embed`, or a Hub repo `lavic-ref push` wrote "
                   "(owner/name[@revision]: its item embeddings, with its distill/ adapter).")
@click.option("--no-images", is_flag=True, help="Ablation: titles only, no item tokens.")
@click.option("--candidates", "candidate_set", default="sbert", show_default=True,
              help="Candidate set: column candidates_<NAME>.")
@click.option("--max-tokens", type=click.IntRange(64), default=2048, show_default=True,
              help="Prompt cap; the oldest conversation tokens are dropped beyond it, then the candidate "
                   "titles shortened.")
@click.option("--train-split", default="train", show_default=True,
              help="Split to train on. The LaViC authors' release (import-lavic) has only validation: "
                   "--train-split validation trains on it, and its per-epoch loss is then not held out.")
@click.option("--instances", "instance_style", type=click.Choice(["paper", "authors-code"]), default="paper",
              show_default=True, help="paper: exactly one gt among the candidates, shuffled (Section 4.3); "
                                      "authors-code: stored candidate order, other gt items kept (the released code).")
@_training_options(epochs=1, batch_size=1)
def finetune(dataset, domains, base, device, embeddings, no_images, candidate_set, max_tokens, train_split,
             instance_style, **training) -> None:
    """Recommendation fine-tuning: LoRA on the LM, 10 candidates as `ID: title` + 5 item tokens, target = gt ID.

    Trains on the train split (--train-split) of the chosen domains; the validation split gives the per-epoch loss.

    \b
    Examples:
      lavic-ref finetune --embeddings runs/lavic/item_embeddings-*.safetensors --out runs/lavic/rec
      lavic-ref finetune --no-images --out runs/lavic-titles --domain home   # Table 7: no images
    """
    from cards.model_card import BUNDLED_SAMPLE
    from lavic_ref.data import iter_domain_items
    from lavic_ref.embed import EmbeddingsError, check_embeddings
    from lavic_ref.finetune import check_prompt_cap
    from lavic_ref.finetune import finetune as run_finetune
    from lavic_ref.sequences import PromptTooLongError

    if bool(embeddings) == no_images:
        raise click.UsageError("give exactly one of --embeddings or --no-images")
    config = _train_config(**training)
    if len(domains) > 1:
        log_line(f"note: one model for {', '.join(domains)} is the paper's LaViC-combined (Table 8); its main "
                 "results (Tables 3-7, LaViC-separate) train one model per domain: run finetune once per --domain")
    train_set, val_set = _recommendation_sets(dataset, domains, candidate_set, training["seed"], instance_style,
                                              train_split)
    if train_split == VALIDATION_SPLIT:
        log_line("note: training on the validation split: its per-epoch loss and best/ are chosen on the training "
                 "records, and benchmark scores on it are not held out")
    processor = _load_processor(base)  # its tokenizer checks the cap before the model loads; the model takes it
    try:
        check_prompt_cap(processor.tokenizer, train_set + val_set, with_images=not no_images, max_tokens=max_tokens)
    except PromptTooLongError as error:
        raise click.ClickException(f"--max-tokens {max_tokens} is too small: {error}") from error
    titles = {item.item_id: item.title for item in iter_domain_items(dataset, domains)}
    cache = _embeddings_of_candidates(embeddings, train_set + val_set) if embeddings else None
    backbone = _load_backbone(base, device, processor)
    if cache is not None:
        try:
            check_embeddings(cache, embeddings, backbone)
        except EmbeddingsError as error:
            raise click.ClickException(str(error)) from error
    result = _train(run_finetune, backbone, train_set, val_set, titles, cache, config, max_tokens=max_tokens,
                    resume=training["resume"],
                    settings={"domains": list(domains), "candidates": candidate_set, "instances": instance_style})
    click.echo(f"best adapter: {result.best_dir} (validation loss {result.best_val_loss:.4f})")
    if not result.trained and card_describes(config.output_dir, result.elapsed_s, result.best_val_loss):
        # Nothing was left to train: the card (and any results `lavic-ref card` added) still describes the adapter.
        click.echo(f"nothing left to train: model card in {config.output_dir} left as it was")
        return
    distill = _distill_record(cache, embeddings)
    card = write_model_card(config.output_dir, {
        "base_model": published_base(base), "base_fingerprint": backbone.fingerprint or None,
        # Absolute: `lavic-ref card` may run in another folder, and must tell the card's own files from others.
        "adapters": {"distill_adapter": _distill_adapter_path(cache, embeddings),
                     "rec_adapter": str(result.best_dir.absolute()),
                     "item_embeddings": str(Path(embeddings).absolute()) if embeddings else None},
        "hyperparameters": {"lora": "r=8, alpha=32, dropout=0.1 on the LM attention and MLP projections",
                            "epochs": config.epochs, "batch_size": config.batch_size, "grad_accum": config.grad_accum,
                            "learning_rate": config.learning_rate, "weight_decay": config.weight_decay,
                            "max_grad_norm": config.max_grad_norm, "max_prompt_tokens": max_tokens,
                            "images": not no_images, "seed": config.seed,
                            "training_instances": instance_style,
                            "max_steps_per_epoch": config.max_steps,  # a smoke run must not read as a full one
                            "distill": distill.settings},  # stage 1: its adapter may be a smoke run too
        "data": {"dataset": dataset or BUNDLED_SAMPLE, "fingerprint": _fingerprint_of(dataset),
                 "domains": list(domains), "candidates": candidate_set, "train_split": train_split,
                 "train_examples": len(train_set), "validation_examples": len(val_set),
                 "train_examples_used_per_epoch": len(train_set) if config.max_steps is None else
                 min(len(train_set), config.max_steps * config.grad_accum * config.batch_size)},
        "training": {"time_s": result.elapsed_s, "hardware": hardware_name(backbone.device),
                     "best_validation_loss": result.best_val_loss, **distill.training},
    })
    add_results = shlex.join(["lavic-ref", "card", str(config.output_dir)])
    click.echo(f"model card: {card} (add results with `{add_results} --results ...`)")


#: The split whose loss picks the best epoch (and that --train-split may name when there is no other).
VALIDATION_SPLIT = "validation"


def _recommendation_sets(dataset: str | None, domains: Sequence[str], candidate_set: str, seed: int,
                         instance_style: str, train_split: str = "train",
                         ) -> tuple[list[RecommendationInstance], list[RecommendationInstance]]:
    """The training and validation instances of ``domains``, drawn with one generator seeded by ``seed``."""
    import random

    from lavic_ref.data import MissingSplitError, load_conversations, recommendation_instances

    rng = random.Random(seed)
    train_set, val_set = [], []
    try:
        for domain in domains:
            train_set += recommendation_instances(load_conversations(dataset, domain, train_split), candidate_set,
                                                  rng, instance_style)
            val_set += recommendation_instances(load_conversations(dataset, domain, VALIDATION_SPLIT), candidate_set,
                                                rng, instance_style)
    except MissingSplitError as error:
        hint = ""
        if error.split == train_split and error.present == [VALIDATION_SPLIT]:
            hint = (f": the dataset holds only {VALIDATION_SPLIT} records (as the LaViC authors' release does); "
                    f"train on them explicitly with --train-split {VALIDATION_SPLIT}, or use a dataset with a "
                    f"{train_split} split")
        elif error.split == train_split and error.present:
            hint = ": pick one with --train-split"
        raise click.ClickException(f"{error}{hint}") from error
    except ValueError as error:
        raise click.ClickException(f"{domain}: {error}") from error
    return train_set, val_set


def _embeddings_of_candidates(path: Path, instances: Sequence[RecommendationInstance]) -> ItemEmbeddings:
    """The item embeddings at ``path``, refused unless they hold every candidate of ``instances``."""
    from lavic_ref.embed import ItemEmbeddings

    cache = ItemEmbeddings.load(path)
    absent = cache.missing(c for instance in instances for c in instance.candidates)
    if absent:
        raise click.ClickException(f"{path} lacks {len(absent)} candidate item(s), e.g. {absent[0]}: "
                                   "run `lavic-ref embed` on the same dataset and domains")
    return cache


def _distill_adapter_path(cache: ItemEmbeddings | None, embeddings: Path | None) -> str | None:
    """The absolute path of the distill adapter the item embeddings were made with (as given to an `embed` run
    before they recorded it; beside published ones in their repo)."""
    from lavic_ref.publish import distill_adapter_of

    folder = distill_adapter_of(embeddings, cache.metadata) if cache is not None else None
    return None if folder is None else str(folder.absolute())


@dataclass(frozen=True)
class DistillRecord:
    """What the model card says of stage 1: the item embeddings' distill adapter, from what its run recorded."""

    settings: dict[str, Any]  # its training settings, or {"recorded": why they are not known}
    training: dict[str, Any]  # {"distill_time_s": its run's training time or None}; {} without a distill adapter


def _distill_record(cache: Any, embeddings: Path | None = None) -> DistillRecord:
    """The settings the item embeddings' distill adapter was trained with (its ``lavic_base.json``) and its run's
    training time (the ``last/`` checkpoint beside it, of the same run), for the card: only while the adapter at
    the recorded path is still the one the embeddings were made with (a distill rerun into the same folder replaces
    it, and its settings would then pass for those of the embeddings' adapter)."""
    from cards.local_paths import shown_value
    from lavic_ref.model import BASE_FILE, adapter_fingerprint
    from lavic_ref.publish import distill_adapter_of
    from reddit_amazon.files import DamagedFileError, read_json

    folder = distill_adapter_of(embeddings, cache.metadata) if cache is not None else None
    if folder is None:
        return DistillRecord({"recorded": "no distill adapter (embeddings from the base vision tower)"}, {})
    adapter = cache.metadata["adapter"]
    not_recorded = {"distill_time_s": None}
    # The published card shows these lines: an absolute path (where it lay on this machine) by its name only.
    shown = f"the distill adapter {shown_value(adapter)}"
    if not folder.is_dir():
        where = (f" beside the published item embeddings (a repo `lavic-ref push` wrote has it in {adapter}/: "
                 "keep it with them)" if "adapter_path" in cache.metadata and not cache.metadata["adapter_path"]
                 else "" if folder.is_absolute() else
                 " (a path relative to the folder `lavic-ref embed` ran in: run finetune there)")
        return DistillRecord({"recorded": f"unknown: {shown} is not there{where}"}, not_recorded)
    try:
        trained = read_json(folder / BASE_FILE, remedy="").get("trained_with")
    except (OSError, DamagedFileError):
        trained = None
    if not isinstance(trained, dict):
        return DistillRecord({"recorded": f"no: {shown} has no record of them (no {BASE_FILE} with its training "
                                          "settings)"}, not_recorded)
    recorded = cache.metadata.get("adapter_hash")
    if recorded and adapter_fingerprint(folder) != recorded:
        return DistillRecord({"recorded": f"no: {shown} has changed since the item embeddings were made with it"},
                             not_recorded)
    keys = ["batch_size", "grad_accum", "learning_rate", "weight_decay", "max_grad_norm", "max_steps", "seed",
            "domains"]
    return DistillRecord({key: trained[key] for key in keys if key in trained},
                         {"distill_time_s": _distill_time_s(folder, trained)})


def _distill_time_s(adapter: Path, trained_with: dict[str, Any]) -> float | None:
    """The training time the distill run's checkpoint (``last/`` beside its ``best/`` adapter) records, resumes
    included as for ``finetune``; None where there is none, or it is of another run (other settings)."""
    from lavic_ref.training import STATE_FILE, settings_as_recorded_now
    from reddit_amazon.files import DamagedFileError, read_json

    try:
        state = read_json(adapter.parent / "last" / STATE_FILE, remedy="")
    except (OSError, DamagedFileError):
        return None
    if not isinstance(state.get("settings"), dict):
        return None
    if settings_as_recorded_now(state["settings"]) != settings_as_recorded_now(trained_with):
        return None
    elapsed = state.get("elapsed_s")
    return round(float(elapsed), 1) if isinstance(elapsed, (int, float)) else None


@cli.command("card")
@click.argument("out", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.option("--results", "results", multiple=True, type=UserPath(exists=True, dir_okay=False, path_type=Path),
              help="results.json of a `benchmark run --model lavic` (repeatable; other models' results are "
                   "refused: the card publishes them as LaViC's).")
@_file_errors_as_lines
def card_command(out, results) -> None:
    """Re-render OUT/README.md (the model card) with benchmark results beside the paper's.

    \b
    Example:
      lavic-ref card runs/lavic/rec --results runs/lavic/test-sbert/results.json \\
          --results runs/lavic/test-openai/results.json
    """
    try:
        click.echo(str(render_from_inputs(out, results)))
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from error


@cli.command("push")
@click.argument("out", type=UserPath(exists=True, file_okay=False, path_type=Path))
@click.argument("repo_id")
@push_options
@click.option("--base-id", default=None,
              help="Hub id of the base model, for a base that was a local checkpoint naming none.")
@_file_errors_as_lines
def push_command(out, repo_id, private, revision, base_id) -> None:
    """Publish a `lavic-ref finetune --out` folder as the Hub model repo REPO_ID, in one commit.

    Uploads the model card (rendered for the repo), the rec adapter (best/), the distill adapter (distill/) and the
    item embeddings the fine-tuning used; not last/ checkpoints, history.json or model_card.json. The token comes
    from HF_TOKEN (else `hf auth login`).

    \b
    Examples:
      lavic-ref push runs/lavic/rec me/lavic-fashion
      benchmark run --model lavic --model-args rec_adapter=me/lavic-fashion,distill_adapter=me/lavic-fashion,\\
          item_embeddings=me/lavic-fashion
      lavic-ref push runs/lavic/rec-lr2e-4 me/lavic-fashion --revision lr2e-4    # a new branch beside main
      benchmark run --model lavic --model-args rec_adapter=me/lavic-fashion@lr2e-4,...
    """
    from lavic_ref.publish import push_model
    from reddit_amazon.hub_push import PushRefused

    try:
        commit = push_model(out, repo_id, base_id=base_id, private=private, revision=revision,
                            token=os.environ.get("HF_TOKEN"))
    except PushRefused as error:  # no token, or a folder that cannot be published as it is
        raise click.ClickException(str(error)) from error
    click.echo(commit)


if __name__ == "__main__":
    main()
