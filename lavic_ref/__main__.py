"""``python -m lavic_ref`` and the ``lavic-ref`` console script: the command line of ``lavic_ref.cli``, imported
only once a Ctrl-C during its import ends the command as it would later (see reddit_amazon.entry_point)."""

from reddit_amazon.entry_point import run_cli_module


def main() -> None:
    run_cli_module("lavic_ref.cli")


if __name__ == "__main__":
    main()
