"""``python -m reddit_amazon`` and the ``reddit-amazon`` console script: the command line of ``reddit_amazon.cli``, imported
only once a Ctrl-C during its import ends the command as it would later (see reddit_amazon.entry_point)."""

from reddit_amazon.entry_point import run_cli_module


def main() -> None:
    run_cli_module("reddit_amazon.cli")


if __name__ == "__main__":
    main()
