"""Reviewed text of the cards lives in ``cards/templates/``; code fills its ``$slots``.

``string.Template.substitute`` raises on a missing slot, so a card can never ship an unfilled one.
"""

from __future__ import annotations

from importlib import resources
from string import Template


def read_template(name: str) -> str:
    return resources.files("cards").joinpath("templates", name).read_text(encoding="utf-8")


def fill_template(name: str, **values: object) -> str:
    try:
        return Template(read_template(name)).substitute({key: str(value) for key, value in values.items()})
    except KeyError as error:
        raise KeyError(f"cards/templates/{name}: no value for slot ${error.args[0]}") from None
