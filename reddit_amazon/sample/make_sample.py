"""Regenerate the bundled sample dataset (``reddit_amazon/sample/reddit-amazon/``).

    python -m reddit_amazon.sample.make_inputs    # only after changing the world or the Reddit stage
    python -m reddit_amazon.sample.make_sample    # = `reddit-amazon build` on the bundled inputs

The shipped sample is exactly what ``reddit-amazon build`` (no arguments) produces from the bundled
inputs; ``tests/test_build.py`` rebuilds it and compares fingerprints.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from reddit_amazon.sample import SAMPLE_DATASET


def build_sample(out: Path = SAMPLE_DATASET) -> dict[str, Any]:
    """Build into ``out``; run from its parent so the manifest records relative paths only."""
    from reddit_amazon.build import run_build, sample_options

    out = out.resolve()
    workdir = Path(f"{out.name}.work")
    previous = Path.cwd()
    os.chdir(out.parent)
    try:
        manifest = run_build(sample_options(Path(out.name), workdir))
        assert manifest is not None  # sample_options is not a dry run
        return manifest
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        os.chdir(previous)


def main() -> None:
    manifest = build_sample()
    print(f"wrote {SAMPLE_DATASET} (fingerprint {manifest['fingerprint'][:12]}): {manifest['counts']}")


if __name__ == "__main__":
    main()
