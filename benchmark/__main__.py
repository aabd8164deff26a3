"""``python -m benchmark`` and the ``benchmark`` console script: the command line of ``benchmark.cli``, imported
only once a Ctrl-C during its import ends the command as it would later (see reddit_amazon.entry_point)."""

from reddit_amazon.entry_point import run_cli_module


def main() -> None:
    run_cli_module("benchmark.cli")


if __name__ == "__main__":
    main()
