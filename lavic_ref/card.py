"""The model card written next to the fine-tuned adapters (``<out>/README.md``).

``lavic-ref finetune`` records what it measured in ``<out>/model_card.json`` and renders the card;
``lavic-ref card <out> --results runs/*/results.json`` re-renders it once benchmark runs exist, so
every number in the card comes from a file, none is typed by hand. Only results of the ``lavic`` model
are accepted: the card publishes them as LaViC's.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reddit_amazon.files import DamagedFileError, read_json, write_atomic

CARD_INPUTS = "model_card.json"
#: Where ``model_card.json`` keeps the parsed results.json files the card was last rendered with.
RESULTS_KEY = "results"
#: What ``benchmark run --model lavic`` resolves its model to (results.json ``model.target``).
LAVIC_TARGET = "lavic_ref.recommender:LavicRecommender"


def hardware_name(device: Any) -> str:
    """What the model card names as the training hardware: the CUDA device's name, the machine's processor for the
    CPU, else the device type on that machine (``mps`` is Apple's GPU, not its CPU); each with torch's version.
    (``benchmark.runner.cuda_device_name`` is another thing: results.json's ``device_name``, None but for CUDA.)"""
    import torch

    device = torch.device(device)
    machine = platform.processor() or platform.machine()
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    elif device.type == "cpu":
        hardware = f"{machine} CPU"
    else:
        hardware = f"{device.type} device on {machine}"
    return f"{hardware} (torch {torch.__version__})"


def published_base(base: str | None) -> str | None:
    """The Hub id a published card names for ``--base``: a Hub id as given; for a local checkpoint the Hub id it
    records (its Hugging Face cache folder ``models--<org>--<name>/snapshots/<commit>``, ``_name_or_path`` in its
    ``config.json``, or the ``base`` of its ``lavic_base.json``), else None. Never a local path: the card's YAML
    ``base_model`` must be a Hub repo id, and where the base lay on the training machine is nobody's business."""
    from cards.model_card import hub_model_id

    if not base:
        return None
    folder = Path(base).expanduser()
    if not folder.is_dir():
        return hub_model_id(base)
    from lavic_ref.model import BASE_FILE

    recorded = [_hub_cache_repo(folder), _recorded(folder / "config.json", "_name_or_path"),
                _recorded(folder / BASE_FILE, "base")]
    return next((name for name in recorded if hub_model_id(name) and not Path(name).expanduser().exists()), None)


def shown_base(base: str) -> str:
    """The base model as a file published with the adapters names it: the Hub id :func:`published_base` finds, else
    as the cards show a path (an absolute one by its folder name: :func:`cards.local_paths.shown_value`)."""
    from cards.local_paths import shown_value

    return published_base(base) or shown_value(base)


def _hub_cache_repo(folder: Path) -> str | None:
    parts = folder.resolve().parts
    if len(parts) >= 3 and parts[-3].startswith("models--") and parts[-2] == "snapshots":
        return parts[-3].removeprefix("models--").replace("--", "/")  # a repo id never holds "--"
    return None


def _recorded(path: Path, key: str) -> Any:
    try:
        return read_json(path, remedy="").get(key)
    except (OSError, DamagedFileError):
        return None


def write_model_card(out_dir: Path, inputs: dict[str, Any]) -> Path:
    """Render ``README.md`` without results (``lavic-ref card --results`` adds them), then store the card's inputs:
    written last, ``model_card.json`` records the training of a whole card (see :func:`card_describes`), also where
    the process is killed in between."""
    text = json.dumps(inputs, indent=2, default=str) + "\n"
    readme = _render(out_dir, json.loads(text), ())  # the inputs as they read back from the file
    write_atomic(out_dir / CARD_INPUTS, text.encode("utf-8"))
    return readme


def render_from_inputs(out_dir: Path, results: Sequence[Path] = ()) -> Path:
    path = out_dir / CARD_INPUTS
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {CARD_INPUTS}: it is written by `lavic-ref finetune`")
    inputs = read_card_inputs(out_dir)
    parsed = [_read_results(Path(result), out_dir) for result in results]
    readme = _render(out_dir, inputs, parsed)
    # The results the card now shows, so the card `lavic-ref push` renders for the Hub shows them too.
    stored = {key: value for key, value in inputs.items() if key != RESULTS_KEY} | ({RESULTS_KEY: parsed} if parsed
                                                                                   else {})
    if stored != inputs:
        write_atomic(path, (json.dumps(stored, indent=2, default=str) + "\n").encode("utf-8"))
    return readme


def read_card_inputs(out_dir: Path) -> dict[str, Any]:
    """``out_dir``'s ``model_card.json``; one whose adapters are not paths by role, or whose stored results are not
    results.json files of benchmark runs, is damaged (a :class:`DamagedFileError` naming it)."""
    path = out_dir / CARD_INPUTS
    remedy = "rerun the `lavic-ref finetune` that wrote it: with nothing left to train, it writes the card again"
    inputs = read_json(path, remedy=remedy)
    problem = _card_inputs_problem(inputs)
    if problem:
        raise DamagedFileError(f"{path}: damaged, {problem}; {remedy}")
    return inputs


def _card_inputs_problem(inputs: dict[str, Any]) -> str | None:
    from cards.model_card import results_problem

    adapters = inputs.get("adapters")
    if adapters is not None and not (isinstance(adapters, dict)
                                     and all(value is None or isinstance(value, str) for value in adapters.values())):
        return "its adapters are not an object of paths"
    results = inputs.get(RESULTS_KEY, [])
    if not isinstance(results, list):
        return f"its {RESULTS_KEY} are not a list"
    for index, result in enumerate(results):
        problem = results_problem(result)
        if problem:
            return f"its {RESULTS_KEY}[{index}] is {problem}"
    return None


def render_for_repo(out_dir: Path, repo_id: str, base_id: str, adapters: dict[str, str | None]) -> str:
    """The model card of ``out_dir`` as published in the Hub model repo ``repo_id`` (``lavic-ref push``): base model
    ``base_id``, ``adapters`` named by their path in the repo, the results the local card shows (those
    ``lavic-ref card --results`` gave it last), a Use command that gives the repo id for every file option."""
    from cards.model_card import render_model_card

    inputs = read_card_inputs(out_dir)
    results = inputs.pop(RESULTS_KEY, None) or []
    inputs = _without_base_path(inputs)
    return render_model_card(**{**inputs, "base_model": base_id, "adapters": adapters}, results=results,
                             hub_repo=repo_id)


def _render(out_dir: Path, inputs: dict[str, Any], results: Sequence[dict[str, Any]]) -> Path:
    from cards.model_card import render_model_card

    readme = out_dir / "README.md"
    inputs = _without_base_path({key: value for key, value in inputs.items() if key != RESULTS_KEY})
    adapters = {key: _as_published(value, out_dir) for key, value in (inputs.get("adapters") or {}).items()}
    write_atomic(readme, render_model_card(**{**inputs, "adapters": adapters}, results=results).encode("utf-8"))
    return readme


def _as_published(path: Any, out_dir: Path) -> Any:
    """A recorded file path as the published card takes it: relative to the card's folder where it lies in it, else
    absolute (the card shows it by name only). A relative path (``model_card.json`` files from before recorded
    paths as given) is taken from the working folder, and only as the card's own file where that file is there: it
    was relative to the folder finetune ran in, maybe not this one."""
    if not isinstance(path, str) or not path:
        return path
    recorded = Path(path).expanduser()
    folder = out_dir.expanduser().resolve()
    resolved = recorded.resolve()
    if resolved.is_relative_to(folder) and (recorded.is_absolute() or resolved.exists()):
        return resolved.relative_to(folder).as_posix()
    return str(recorded.absolute())  # its name as recorded (not a symlink's target's)


def _without_base_path(inputs: dict[str, Any]) -> dict[str, Any]:
    """The inputs with ``base_model`` as :func:`published_base` gives it: a ``model_card.json`` written before
    recorded ``--base`` as given, a local path included; its weights fingerprint then comes from the adapter's
    ``lavic_base.json``."""
    from cards.model_card import hub_model_id

    base = inputs.get("base_model")
    if hub_model_id(base) is not None or "base_fingerprint" in inputs:
        return inputs
    from lavic_ref.model import BASE_FILE

    adapter = (inputs.get("adapters") or {}).get("rec_adapter")
    fingerprint = _recorded(Path(adapter) / BASE_FILE, "fingerprint") if adapter else None
    return {**inputs, "base_model": published_base(base), "base_fingerprint": fingerprint or None}


def card_describes(out_dir: Path, training_time_s: float, best_validation_loss: float) -> bool:
    """Whether ``out_dir`` holds the card of the training that reached this state (its whole time and best
    validation loss). A ``finetune`` killed after its training finished but before its card was written leaves
    none, or the card of an earlier state (the run before a rerun with more ``--epochs``): its rerun, with
    nothing left to train, must still write the card."""
    try:
        training = read_card_inputs(out_dir).get("training")
    except (OSError, DamagedFileError):
        return False
    return (isinstance(training, dict) and (out_dir / "README.md").is_file()
            and (training.get("time_s"), training.get("best_validation_loss")) == (training_time_s, best_validation_loss))


def _read_results(path: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """A ``benchmark run --model lavic`` results.json (of ``out_dir``'s adapter); anything else fails naming the file."""
    from cards.model_card import results_problem

    results = read_json(path, object, remedy="give the results.json of a `benchmark run --model lavic`")
    problem = results_problem(results)
    if problem:
        raise ValueError(f"{path}: {problem}")
    model = results["model"]
    if model.get("spec") != "lavic" and LAVIC_TARGET not in (model.get("spec"), model.get("target")):
        raise ValueError(f"{path}: results of model {model.get('spec')!r}, not of LaViC: give the results.json "
                         "of a `benchmark run --model lavic`")
    if out_dir is not None:
        _check_same_adapter(path, model, out_dir)
    return results


def _check_same_adapter(path: Path, model: dict[str, Any], out_dir: Path) -> None:
    """The run must have used this folder's fine-tuned adapter: the card publishes its results as this model's. The
    adapter is told by its hash (the same bytes are the same adapter, a copy or a Hub repo's included): the one the
    results record, else (results from before they recorded it) that of the folder they name, where it is there."""
    from lavic_ref.model import AdapterError, adapter_fingerprint, resolve_adapter_dir

    used = (model.get("args") or {}).get("rec_adapter")
    if not used:
        return
    try:
        wanted = adapter_fingerprint(resolve_adapter_dir(out_dir))
        recorded = (model.get("settings") or {}).get("rec_adapter_hash") \
            or adapter_fingerprint(resolve_adapter_dir(str(used)))
    except AdapterError:
        return  # a path relative to another folder, moved, or a Hub id, in results recording no hash: cannot tell
    if recorded != wanted:
        raise ValueError(f"{path}: a run of rec_adapter={used} (adapter hash {recorded}), not of the adapter in "
                         f"{out_dir} ({wanted})")
