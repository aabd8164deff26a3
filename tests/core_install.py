"""Running Python as a core install (``pip install reddit-amazon[test]``) sees it, whatever this environment holds:
``without_extras/sitecustomize.py`` hides the modules of the ``lavic``, ``retrieval`` and ``cluster`` extras from
the interpreter and from every Python it starts."""

from __future__ import annotations

import os
from pathlib import Path

WITHOUT_EXTRAS = Path(__file__).resolve().parent / "without_extras"


def core_install_env() -> dict[str, str]:
    """This process's environment, with the extras hidden from the Python started with it."""
    path = [str(WITHOUT_EXTRAS), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def import_extra(module: str):
    """``module``, one of an extra's, imported; else the test skips, its reason naming the extra to install (pytest's
    own "could not import 'torch'" does not say that ``pip install 'reddit-amazon[lavic]'`` brings it)."""
    __tracebackhide__ = True  # a module-level skip is reported at the caller's line, not this one
    import pytest

    from reddit_amazon.cli_errors import EXTRA_OF_MODULE

    return pytest.importorskip(module, reason=f"{module} (the `{EXTRA_OF_MODULE[module]}` extra) is not installed")
