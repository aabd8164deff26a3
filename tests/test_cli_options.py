"""What every command line shares: each option says what it does in --help, and ``--seed`` takes one range
wherever it seeds a random number generator."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from benchmark.cli import cli as benchmark_cli
from lavic_ref.cli import cli as lavic_cli
from reddit_amazon.cli import cli as reddit_amazon_cli

CLIS = {"reddit-amazon": reddit_amazon_cli, "benchmark": benchmark_cli, "lavic-ref": lavic_cli}


def _commands(command: click.Command, path: str):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    undocumented = [f"{path} {'/'.join(param.opts)}"
                    for name, cli in CLIS.items() for path, command in _commands(cli, name)
                    for param in command.params
                    if isinstance(param, click.Option) and "--help" not in param.opts
                    and not (param.help or "").strip()]
    assert undocumented == []


SEEDED = [pytest.param(benchmark_cli, ["run", "--model", "random", "--out", "{tmp}/out"], id="benchmark run"),
          pytest.param(benchmark_cli, ["retrieve", "--retriever", "bm25", "--out", "{tmp}/out"],
                       id="benchmark retrieve"),
          pytest.param(benchmark_cli, ["compare", "{tmp}", "{tmp}"], id="benchmark compare"),
          pytest.param(lavic_cli, ["distill", "--out", "{tmp}/out"], id="lavic-ref distill"),
          pytest.param(lavic_cli, ["finetune", "--out", "{tmp}/out"], id="lavic-ref finetune")]


@pytest.mark.parametrize("seed", [-1, 2**64])
@pytest.mark.parametrize(("cli", "arguments"), SEEDED)
def test_a_seed_outside_0_to_2_to_the_64_is_a_usage_error_of_one_line(cli, arguments, seed, tmp_path):
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in arguments] + ["--seed", str(seed)])
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert result.exit_code == 2, result.output
    assert errors == [f"Error: Invalid value for '--seed': {seed} is not in the range 0<=x<=18446744073709551615."]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("cli", "arguments"), SEEDED)
def test_the_seed_range_is_in_the_help(cli, arguments, tmp_path):
    result = CliRunner().invoke(cli, [arguments[0], "--help"], terminal_width=200)
    assert result.exit_code == 0 and "0 to 2**64-1" in " ".join(result.output.split())


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_reddit_amazon_build_takes_any_integer_seed_as_it_hashes_it(seed, tmp_path):
    """The build's seed is text hashed with each thread id (split_by_thread), not a generator's seed."""
    result = CliRunner().invoke(reddit_amazon_cli, ["build", "--help"], terminal_width=200)
    assert "any integer" in " ".join(result.output.split())
    seed_option = next(p for p in reddit_amazon_cli.commands["build"].params if p.name == "seed")
    assert seed_option.type_cast_value(click.Context(reddit_amazon_cli), str(seed)) == seed
