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

from reddit_amazon.files import write_atomic

CARD_INPUTS = "model_card.json"
#: What ``benchmark run --model lavic`` resolves its model to (results.json ``model.target``).
LAVIC_TARGET = "lavic_ref.recommender:LavicRecommender"


def hardware_name(device: Any) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


def write_model_card(out_dir: Path, inputs: dict[str, Any], results: Sequence[Path] = ()) -> Path:
    """Store the card's inputs and render ``README.md`` with the given ``results.json`` files."""
    write_atomic(out_dir / CARD_INPUTS, (json.dumps(inputs, indent=2, default=str) + "\n").encode("utf-8"))
    return render_from_inputs(out_dir, results)


def render_from_inputs(out_dir: Path, results: Sequence[Path] = ()) -> Path:
    from cards.model_card import render_model_card

    path = out_dir / CARD_INPUTS
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {CARD_INPUTS}: it is written by `lavic-ref finetune`")
    inputs = _read_json(path)
    parsed = [_read_results(Path(result), out_dir) for result in results]
    readme = out_dir / "README.md"
    write_atomic(readme, render_model_card(**inputs, results=parsed).encode("utf-8"))
    return readme


def _read_results(path: Path, out_dir: Path | None = None) -> dict[str, Any]:
    """A ``benchmark run --model lavic`` results.json (of ``out_dir``'s adapter); anything else fails naming the file."""
    from cards.model_card import results_problem

    results = _read_json(path)
    problem = results_problem(results)
    if problem:
        raise ValueError(f"{path}: {problem}")
    model = results["model"]
    if model.get("spec") != "lavic" and LAVIC_TARGET not in (model.get("spec"), model.get("target")):
        raise ValueError(f"{path}: results of model {model.get('spec')!r}, not of LaViC: give the results.json "
                         "of a `benchmark run --model lavic`")
    if out_dir is not None:
        _check_same_adapter(path, model.get("args") or {}, out_dir)
    return results


def _check_same_adapter(path: Path, args: dict[str, Any], out_dir: Path) -> None:
    """The run must have used this folder's fine-tuned adapter: the card publishes its results as this model's."""
    from lavic_ref.model import AdapterError, resolve_adapter_dir

    used = args.get("rec_adapter")
    if not used:
        return
    try:
        same = resolve_adapter_dir(str(used)).resolve() == resolve_adapter_dir(out_dir).resolve()
    except AdapterError:
        return  # a path relative to another folder, or moved: cannot tell
    if not same:
        raise ValueError(f"{path}: a run of rec_adapter={used}, not of the adapter in {out_dir}")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not a JSON file ({error})") from error
