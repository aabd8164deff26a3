"""``python -m reddit_amazon``: the same command line as ``reddit-amazon``."""

from reddit_amazon.cli import main

if __name__ == "__main__":
    main()
