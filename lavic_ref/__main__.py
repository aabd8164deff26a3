"""``python -m lavic_ref``: the same command line as ``lavic-ref``."""

from lavic_ref.cli import main

if __name__ == "__main__":
    main()
