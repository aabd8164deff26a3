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
