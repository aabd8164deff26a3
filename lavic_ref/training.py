"""The LoRA training loop shared by distillation and fine-tuning.

AdamW on the adapter's parameters, gradient accumulation, gradient clipping (the accumulated gradient's norm,
as the authors' Lightning scripts clip with ``gradient_clip_val=1.0``), bf16 autocast on a GPU, validation loss
after each epoch with the best adapter kept in ``<output_dir>/best``, and a resumable checkpoint in
``<output_dir>/last`` (adapter, optimizer, RNG states, position in the epoch, the run's settings) every
``save_every`` optimizer steps and at each epoch's end. A checkpoint is resumed only by a run with the same
settings (:data:`RESUMABLE_FIELDS` may change), so a resumed run trains what an uninterrupted one would. The
checkpoint also carries the time trained so far, so the time a resumed run reports covers the whole run (less
what an interrupted process did after its last checkpoint).
"""

from __future__ import annotations

import errno
import filecmp
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from lavic_ref.model import Backbone, compile_language_layers, save_adapter
from reddit_amazon.files import (naming_write_failure, read_json, remove_abandoned_siblings,
                                 remove_abandoned_temp_files, replace_dir, write_atomic)
from reddit_amazon.progress import bar_options, log_line

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng_state.pt"
#: TrainConfig fields a resumed run may change: none of them alters what the finished adapter is (checkpointing
#: recomputes with the RNG state it saved). Compiling does: compiled LoRA dropout draws from its own generator,
#: and CUDA graphs pad batches, which moves the dropout masks.
RESUMABLE_FIELDS = ("output_dir", "epochs", "save_every", "gradient_checkpointing")
#: Settings recorded only since they could be chosen, with the value the code before them always trained with:
#: a run's settings written before then (a checkpoint, an adapter's ``trained_with``) mean these. Gradients were
#: not clipped before --max-grad-norm, as ``--max-grad-norm 0`` does not clip them.
SETTINGS_BEFORE_RECORDED = {"max_grad_norm": 0.0}
#: With CUDA graphs every batch is left-padded to a multiple of this many tokens: a 2,048-token cap gives at most
#: 16 widths per batch size, each recorded once and replayed after. Padding changes no loss: pads are masked
#: and RoPE attention depends only on relative positions.
CUDA_GRAPH_LENGTH_MULTIPLE = 128


class CheckpointError(ValueError):
    """``<output_dir>/last`` was written by a run with other settings."""


@dataclass
class TrainConfig:
    output_dir: Path
    epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 5e-5
    weight_decay: float = 1e-5
    grad_accum: int = 1
    max_grad_norm: float = 1.0  # clip the gradient's global norm before each optimizer step; 0 = no clipping
    max_steps: int | None = None  # optimizer steps per epoch (smoke runs); None = whole epoch
    save_every: int = 500
    seed: int = 0
    gradient_checkpointing: bool = True
    compile_layers: bool = False  # torch.compile the LM decoder layers
    cuda_graphs: bool = False  # compiled layers replay CUDA graphs (torch.compile's "reduce-overhead")

    def __post_init__(self) -> None:
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be 0 (no clipping) or positive, not {self.max_grad_norm}")
        if self.cuda_graphs and self.gradient_checkpointing:
            raise ValueError("CUDA graphs need gradient checkpointing off: its recomputation in the backward pass "
                             "runs the compiled layers outside the recorded graphs, which fails")
        if self.cuda_graphs and self.grad_accum > 1:
            raise ValueError("CUDA graphs need --grad-accum 1: gradients are outputs of the recorded backward "
                             "graphs, which the next batch's replay overwrites before they could be summed")

    @property
    def length_multiple(self) -> int:
        """Batches are padded to a multiple of this many tokens (see :data:`CUDA_GRAPH_LENGTH_MULTIPLE`)."""
        return CUDA_GRAPH_LENGTH_MULTIPLE if self.cuda_graphs else 1


@dataclass
class TrainState:
    epoch: int = 0
    batches_done: int = 0  # batches of the current epoch already trained on
    epoch_loss_sum: float = 0.0  # sum of those batches' losses (the epoch's mean train loss)
    global_step: int = 0
    best_val_loss: float = math.inf
    elapsed_s: float = 0.0  # wall-clock time of the run up to this state, over all its processes
    history: list[dict[str, float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # see run_settings


@dataclass
class TrainResult:
    best_dir: Path
    best_val_loss: float
    history: list[dict[str, float]]
    elapsed_s: float  # the whole run's training time, resumed parts included
    trained: bool  # False when a resumed checkpoint had nothing left to train


BatchLoss = Callable[[Sequence[Any]], torch.Tensor]
#: The number of target tokens in a batch (the tokens its mean loss is taken over).
TokenCount = Callable[[Sequence[Any]], int]


def train(backbone: Backbone, train_set: Sequence[Any], val_set: Sequence[Any], batch_loss: BatchLoss,
          config: TrainConfig, *, resume: bool = True, description: str = "train",
          settings: dict[str, Any] | None = None, target_tokens: TokenCount | None = None) -> TrainResult:
    """Train the trainable (LoRA) parameters of ``backbone.model`` to minimise ``batch_loss``.

    ``settings`` describe what is trained beyond ``config`` (task, data, ...); with ``config`` they must
    match those of a checkpoint to resume it (:class:`CheckpointError` otherwise). ``target_tokens`` counts a
    batch's target tokens, so the validation loss is the per-token one (see :func:`evaluate`). Python's and
    torch's global RNGs are seeded with ``config.seed`` for the training and set back as they were after it.
    """
    if not train_set:
        raise ValueError("no training examples")
    with seeded_rngs(config.seed):
        return _train_seeded(backbone, train_set, val_set, batch_loss, config, resume=resume, description=description,
                             settings=settings, target_tokens=target_tokens)


def _train_seeded(backbone: Backbone, train_set: Sequence[Any], val_set: Sequence[Any], batch_loss: BatchLoss,
                  config: TrainConfig, *, resume: bool, description: str, settings: dict[str, Any] | None,
                  target_tokens: TokenCount | None) -> TrainResult:
    started = time.perf_counter()
    model = backbone.model
    output = Path(config.output_dir)  # created by the first checkpoint: a run failing before it leaves no empty folder
    _check_output_folder(output)
    batch_loss = _set_up_layers(backbone, config, batch_loss)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    step = _Optimization(batch_loss, params, optimizer, _autocast(backbone))
    state = TrainState(settings=run_settings(config, backbone, settings or {}))
    last = output / "last"
    for folder in (last, output / "best"):  # a process killed between replace_dir's two renames left it aside
        remove_abandoned_siblings(folder, STATE_FILE)
    if output.is_dir():  # one killed while writing history.json (or finetune's card) left its temporary
        remove_abandoned_temp_files(output)
    if resume and (last / STATE_FILE).is_file():
        state = _load_checkpoint(backbone, optimizer, last, state.settings)
        if _best_is_behind(state, last, output / "best"):  # killed before it wrote best/ (see below)
            _save_best(backbone, state, output)
    elapsed_before = state.elapsed_s
    trained = state.epoch < config.epochs

    def save_checkpoint() -> None:
        state.elapsed_s = elapsed_before + time.perf_counter() - started
        _save_checkpoint(backbone, optimizer, state, last)

    batches_per_epoch = math.ceil(len(train_set) / config.batch_size)
    if config.max_steps is not None:
        batches_per_epoch = min(batches_per_epoch, config.max_steps * config.grad_accum)
    while state.epoch < config.epochs:
        model.train()
        _train_epoch(train_set, step, config, state, batches_per_epoch, f"{description} epoch {state.epoch + 1}",
                     save_checkpoint)
        train_loss = state.epoch_loss_sum / max(state.batches_done, 1)  # mean over the epoch's batches
        val_loss = evaluate(backbone, val_set, batch_loss, config.batch_size, target_tokens) if val_set else train_loss
        best = _record_epoch(state, train_loss, val_loss, description)
        state.epoch += 1
        state.batches_done = 0
        state.epoch_loss_sum = 0.0
        # The checkpoint first: one recording this epoch as the best is what makes best/ its adapter (a resume
        # writes best/ again from it). Written first, best/ would stay the adapter of a killed run's epoch that
        # its rerun, validating it anew, may not find the best (non-deterministic GPU kernels).
        save_checkpoint()
        if best:
            _save_best(backbone, state, output)
    write_atomic(output / "history.json", (json.dumps(state.history, indent=2) + "\n").encode())
    if config.gradient_checkpointing:
        set_gradient_checkpointing(model, False)
    model.eval()
    return TrainResult(output / "best", state.best_val_loss, state.history, round(state.elapsed_s, 1), trained)


def _set_up_layers(backbone: Backbone, config: TrainConfig, batch_loss: BatchLoss) -> BatchLoss:
    """Gradient checkpointing and compiled LM layers as ``config`` asks; ``batch_loss`` as the compiled layers
    need it called (each call a new CUDA-graph step)."""
    if config.gradient_checkpointing:
        set_gradient_checkpointing(backbone.model, True)
    if config.cuda_graphs:
        if backbone.device.type != "cuda":
            log_line(f"warning: CUDA graphs need a CUDA device; on {backbone.device.type} the LM layers are "
                     "compiled without them")
        compile_language_layers(backbone.model, mode="reduce-overhead")
        return _each_call_a_new_graph_step(batch_loss)
    if config.compile_layers:
        compile_language_layers(backbone.model)
    return batch_loss


@dataclass(frozen=True)
class _Optimization:
    """What a training batch needs: its loss, the parameters it trains, their optimizer and the precision."""

    batch_loss: BatchLoss
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    autocast: Any  # from _autocast


def _train_epoch(train_set: Sequence[Any], step: _Optimization, config: TrainConfig, state: TrainState,
                 batches_per_epoch: int, description: str, save_checkpoint: Callable[[], None]) -> None:
    """The batches of ``state.epoch`` from ``state.batches_done`` on, in the epoch's seeded order: an optimizer
    step every ``grad_accum`` batches (and at the epoch's end), a checkpoint every ``save_every`` steps."""
    order = list(range(len(train_set)))
    random.Random(config.seed + state.epoch).shuffle(order)
    progress = tqdm(total=batches_per_epoch, initial=state.batches_done, desc=description, **bar_options())
    step.optimizer.zero_grad(set_to_none=True)
    for index in range(state.batches_done, batches_per_epoch):
        batch = [train_set[i] for i in order[index * config.batch_size:(index + 1) * config.batch_size]]
        with step.autocast:
            loss = step.batch_loss(batch)
        (loss / config.grad_accum).backward()
        state.epoch_loss_sum += loss.item()
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)  # shown at update(), within mininterval
        progress.update()
        state.batches_done = index + 1
        if state.batches_done % config.grad_accum == 0 or state.batches_done == batches_per_epoch:
            if config.max_grad_norm > 0:  # no GradScaler (bf16 autocast needs none): nothing to unscale first
                torch.nn.utils.clip_grad_norm_(step.params, config.max_grad_norm)
            step.optimizer.step()
            step.optimizer.zero_grad(set_to_none=True)
            state.global_step += 1
            if state.global_step % config.save_every == 0:
                save_checkpoint()
    progress.close()


def _record_epoch(state: TrainState, train_loss: float, val_loss: float, description: str) -> bool:
    """The epoch's losses into the history and the log; whether it is the best yet (then recorded as such)."""
    state.history.append({"epoch": state.epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
    log_line(f"{description} epoch {state.epoch + 1}: train loss {train_loss:.4f}, "
             f"validation loss {val_loss:.4f}")
    if val_loss < state.best_val_loss:
        state.best_val_loss = val_loss
        return True
    return False


def _best_is_behind(state: TrainState, last: Path, best: Path) -> bool:
    """Whether the epoch-end checkpoint ``last`` records its epoch as the best, but ``best`` holds other weights.
    Only then: a finished run's rerun leaves best/ as it is (its files, peft's naming the base, are its identity)."""
    if state.batches_done != 0 or not state.history or state.history[-1]["val_loss"] != state.best_val_loss:
        return False
    weights = "adapter_model.safetensors"  # safetensors of the same weights are the same bytes
    return not (best / weights).is_file() or not filecmp.cmp(best / weights, last / weights, shallow=False)


def _save_best(backbone: Backbone, state: TrainState, output: Path) -> None:
    """The adapter as it is into ``output/best``."""
    with _written_beside(output / "best", output / ".best.tmp") as best_tmp:
        save_adapter(backbone, best_tmp, trained_with=state.settings)


def _check_output_folder(output: Path) -> None:
    """Fail now, not at the first checkpoint (``save_every`` steps or an epoch of training later), where
    ``output`` cannot be made or written: a file in its way, a folder without write permission."""
    existing = next(folder for folder in (output, *output.parents) if folder.exists())
    if not existing.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"cannot make the output folder {output}: a file is in its way",
                                 str(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, f"cannot make the output folder {output}: not writable", str(existing))


def _each_call_a_new_graph_step(batch_loss: BatchLoss) -> BatchLoss:
    """Tell CUDA graphs that each batch starts a new iteration, so the last batch's graph outputs may be reused."""
    def marked(batch: Sequence[Any]) -> torch.Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return batch_loss(batch)

    return marked


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Python's and torch's global RNGs seeded with ``seed`` in the block, where LoRA dropout draws from them, and
    set back as they were after it: a caller's own draws (a notebook, a sweep training several adapters) go on as
    if the training had not run. torch's are the CPU's and every GPU's: torch.manual_seed seeds them all, and a
    resumed checkpoint sets them all (:func:`_set_rng_state`), whatever device trains."""
    python_state = random.getstate()
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=gpus):
        random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)


def run_settings(config: TrainConfig, backbone: Backbone, settings: dict[str, Any]) -> dict[str, Any]:
    """What defines the trained adapter: the base weights, ``config`` but :data:`RESUMABLE_FIELDS`, ``settings``."""
    fixed = {k: v for k, v in asdict(config).items() if k not in RESUMABLE_FIELDS}
    return json.loads(json.dumps({"base weights": backbone.fingerprint, **fixed, **settings}, default=str))


def digest(values: Iterable[str | bytes]) -> str:
    """Short hash of a sequence of strings and bytes (each length-prefixed): names a run's examples."""
    hasher = hashlib.sha256()
    for value in values:
        data = value.encode() if isinstance(value, str) else value
        hasher.update(len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()[:16]


def _autocast(backbone: Backbone) -> Any:
    """bf16 autocast on a GPU; on the CPU the model's own dtype."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if backbone.device.type == "cuda" else nullcontext()


def set_gradient_checkpointing(model: Any, enable: bool) -> None:
    """Gradient checkpointing on or off (``activation_checkpointing_*`` from transformers 5.2x on)."""
    kwargs = {"use_reentrant": False}
    if enable and hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif enable:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()


@torch.no_grad()
def evaluate(backbone: Backbone, examples: Sequence[Any], batch_loss: BatchLoss, batch_size: int,
             target_tokens: TokenCount | None = None) -> float:
    """Mean loss over ``examples``, dropout off: per target token with ``target_tokens`` (the paper's validation
    perplexity is its exp, whatever the batch size), else per example."""
    model = backbone.model
    was_training = model.training
    model.eval()
    autocast = _autocast(backbone)
    total, count = 0.0, 0
    for start in tqdm(range(0, len(examples), batch_size), desc="validation", leave=False, **bar_options()):
        batch = examples[start:start + batch_size]
        with autocast:
            weight = target_tokens(batch) if target_tokens else len(batch)
            total += batch_loss(batch).item() * weight
        count += weight
    model.train(was_training)
    return total / max(count, 1)


def _save_checkpoint(backbone: Backbone, optimizer: torch.optim.Optimizer, state: TrainState, folder: Path) -> None:
    with _written_beside(folder, folder.with_name(folder.name + ".tmp")) as tmp:
        save_adapter(backbone, tmp)
        # Into file objects: torch.save given a path fails on a full disk with "unexpected pos N vs M" over a C++
        # stream error, the OS's error lost; given a file, its OSError is what naming_write_failure reports.
        with naming_write_failure(tmp):
            for name, value in ((OPTIMIZER_FILE, optimizer.state_dict()), (RNG_FILE, _rng_state())):
                with open(tmp / name, "wb") as out:
                    torch.save(value, out)
            (tmp / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")


@contextmanager
def _written_beside(folder: Path, tmp: Path) -> Iterator[Path]:
    """``tmp``, emptied (a killed run may have left it), to write ``folder`` into; it replaces ``folder`` when the
    block ends. A block failing (a full disk) removes it: the half-written adapter or optimizer state kept its
    space on the full disk until the next run's save."""
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_checkpoint(backbone: Backbone, optimizer: torch.optim.Optimizer, folder: Path,
                     settings: dict[str, Any]) -> TrainState:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = TrainState(**read_json(folder / STATE_FILE, remedy="this checkpoint cannot be resumed: rerun with "
                                                              "--no-resume to train from the start"))
    _check_settings(folder, state.settings, settings)
    state.settings = settings  # the resumable fields may have changed, e.g. more epochs
    weights = load_file(str(folder / "adapter_model.safetensors"), device=str(backbone.device))
    set_peft_model_state_dict(backbone.model, weights)
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, map_location=backbone.device, weights_only=True))
    if (folder / RNG_FILE).is_file():
        _set_rng_state(torch.load(folder / RNG_FILE, weights_only=True))  # never unpickles, whatever the torch
    log_line(f"resuming from {folder} (epoch {state.epoch + 1}, batch {state.batches_done})")
    return state


def _check_settings(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    if not saved:
        log_line(f"warning: {folder} does not record its run's settings (an older version wrote it); "
                 "resuming without checking them")
        return
    saved = settings_as_recorded_now(saved)
    advice = f"Use another output folder, or --no-resume to start over in {folder.parent} (replacing its adapters)."
    if saved.get("task") != current.get("task"):
        raise CheckpointError(f"{folder} is a checkpoint of a {saved.get('task')} run, not of a "
                              f"{current.get('task')} run.\n{advice}")
    differing = [f"{key}: {_shown(saved, key)} in the checkpoint, {_shown(current, key)} now"
                 for key in sorted(saved.keys() | current.keys()) if saved.get(key) != current.get(key)]
    if differing:
        raise CheckpointError(f"{folder} is a checkpoint of a run with other settings:\n  "
                              + "\n  ".join(differing) + f"\n{advice}")


def settings_as_recorded_now(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's recorded settings with those an older version did not record filled in as it trained."""
    return {**SETTINGS_BEFORE_RECORDED, **settings}


def _shown(settings: dict[str, Any], key: str) -> str:
    return repr(settings[key]) if key in settings else "unset"


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
