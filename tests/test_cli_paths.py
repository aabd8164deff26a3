"""A leading `~` in a path given on the command line (the shell leaves it in '~/x' and --out=~/x)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from reddit_amazon.cli_paths import PATH_OR_NAME, UserPath

pwd = pytest.importorskip("pwd")


@click.command()
@click.argument("path", type=UserPath(exists=True, path_type=Path))
@click.option("--name", "names", type=PATH_OR_NAME, multiple=True)
def show(path: Path, names: tuple[str, ...]) -> None:
    click.echo(json.dumps([str(path), *names]))


def test_a_leading_tilde_is_expanded_as_the_shell_would_and_names_are_left_alone(user_home):
    (user_home / "x").mkdir()
    me = pwd.getpwuid(os.getuid())
    names = ["~", f"~{me.pw_name}/y", "~no-such-user-here/y", "org/name", "hub:org/repo:raw_meta_All_Beauty",
             "a/~/b", "All Beauty=beauty"]
    result = CliRunner().invoke(show, ["~/x", *[arg for name in names for arg in ("--name", name)]])
    assert result.exit_code == 0, result.output  # exists=True looked at $HOME/x
    assert json.loads(result.output) == [str(user_home / "x"), str(user_home), os.path.join(me.pw_dir, "y"),
                                         *names[2:]]
