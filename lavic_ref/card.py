"""The model card written next to the fine-tuned adapters (``<out>/README.md``).

``lavic-ref finetune`` records what it measured in ``<out>/model_card.json`` and renders the card;
``lavic-ref card <out> --results runs/*/results.json`` re-renders it once benchmark runs exist, so
every number in the card comes from a file, none is typed by hand.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

CARD_INPUTS = "model_card.json"


def hardware_name(device: Any) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    return f"{platform.processor() or platform.machine()} CPU (torch {torch.__version__})"


def write_model_card(out_dir: Path, inputs: dict[str, Any], results: Sequence[Path] = ()) -> Path:
    """Store the card's inputs and render ``README.md`` with the given ``results.json`` files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CARD_INPUTS).write_text(json.dumps(inputs, indent=2, default=str) + "\n", encoding="utf-8")
    return render_from_inputs(out_dir, results)


def render_from_inputs(out_dir: Path, results: Sequence[Path] = ()) -> Path:
    from cards.model_card import render_model_card

    path = out_dir / CARD_INPUTS
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no {CARD_INPUTS}: it is written by `lavic-ref finetune`")
    inputs = json.loads(path.read_text(encoding="utf-8"))
    parsed = [json.loads(Path(result).read_text(encoding="utf-8")) for result in results]
    readme = out_dir / "README.md"
    readme.write_text(render_model_card(**inputs, results=parsed), encoding="utf-8")
    return readme
