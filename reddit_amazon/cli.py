"""`reddit-amazon`: build, import, export and describe Reddit-Amazon dataset folders.

Each command lives in the module of its concept; this file only assembles the group.
"""

from __future__ import annotations

import click

from reddit_amazon import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="reddit-amazon")
def cli() -> None:
    """Build, load and describe the Reddit-Amazon conversational recommendation dataset.

    \b
    Examples:
      reddit-amazon build                          # whole pipeline on the bundled sample, offline
      reddit-amazon import-lavic data/ --out reddit-amazon
      reddit-amazon export-lavic reddit-amazon --out lavic-format/
      reddit-amazon sample-path                    # where the bundled sample dataset lives
    """


def main() -> None:
    cli(prog_name="reddit-amazon")


@cli.command("sample-path")
def sample_path_command() -> None:
    """Print the folder of the bundled sample dataset.

    \b
    Example:
      python -c "import datasets; print(datasets.load_dataset('$(reddit-amazon sample-path)', 'home'))"
    """
    from reddit_amazon.sample import sample_dataset_path

    click.echo(str(sample_dataset_path()))
