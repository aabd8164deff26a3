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


def test_a_folder_inside_the_installed_package_is_refused_as_out_or_workdir(tmp_path):
    """`build --out "$(reddit-amazon sample-path)"` replaced the bundled sample the benchmark and the docs read. A
    new folder beside it is asked for here, so that the test cannot damage the sample when the check is missing."""
    import shutil

    from reddit_amazon.cli import cli
    from reddit_amazon.sample import sample_dataset_path

    inside = sample_dataset_path().parent / f"test-out-{os.getpid()}"
    release = tmp_path / "release" / "amazon_home"
    release.mkdir(parents=True)
    (release / "valid.jsonl").write_text("{}\n")
    fast = ["--no-filter", "--no-images", "--retrievers", "none", "--quiet"]
    try:
        for args in (["build", *fast, "--out", str(inside)],
                     ["build", *fast, "--out", str(tmp_path / "ds"), "--workdir", str(inside)],
                     ["import-lavic", str(tmp_path / "release"), "--out", str(inside)],
                     ["reddit-stage", str(tmp_path), "--workdir", str(inside)]):
            result = CliRunner().invoke(cli, args)
            assert result.exit_code == 2 and "Traceback" not in result.output, result.output
            assert "is inside the installed reddit_amazon package" in " ".join(result.output.split())
            assert not inside.exists() and not Path(f"{inside}.work").exists()
    finally:
        for made in (inside, Path(f"{inside}.work")):
            shutil.rmtree(made, ignore_errors=True)
    assert not (tmp_path / "ds").exists()
