"""`benchmark`: run recommenders on Reddit-Amazon, compute retrieval baselines, render leaderboards."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click

from benchmark.metrics import OVERALL
from reddit_amazon import __version__
from reddit_amazon.cli_errors import user_errors
from reddit_amazon.cli_paths import PATH_OR_NAME, UserPath
from reddit_amazon.cli_seed import SEED, SEED_RANGE_HELP
from reddit_amazon.redaction import redact_secrets
from reddit_amazon.schema import DOMAINS

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
DOMAIN_CHOICES = click.Choice([*DOMAINS, OVERALL])


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="benchmark")
def cli() -> None:
    """Score conversational recommenders on Reddit-Amazon exactly like the paper (HR@1, VR).

    \b
    Examples:
      benchmark run --model sbert --out runs/sbert            # bundled sample, offline
      benchmark run --model openai-chat --model-args model=gpt-4o-mini --dataset ./reddit-amazon \\
          --domain all --split test --candidates sbert --out runs/gpt4o-mini
      benchmark retrieve --retriever bm25 --dataset ./reddit-amazon --out runs/bm25-catalog
      benchmark report runs/* --html leaderboard.html
      benchmark compare runs/gpt4o-mini runs/sbert
    """


def main() -> None:
    from reddit_amazon.cli_errors import run_cli

    run_cli(cli, "benchmark")


def _fail(error: Exception) -> None:
    raise click.ClickException(redact_secrets(str(error))) from error


def _run_errors() -> AbstractContextManager[None]:
    """Besides the harness's own errors, what a run may meet whose message says what to fix: endpoint
    refusals (bad key, outage after the retries, timeouts), unreadable files or hub ids, and plugins
    refusing their inputs (e.g. lavic embeddings made for another model)."""
    import openai

    return user_errors(openai.OpenAIError, OSError, ValueError)


@cli.command("run")
@click.option("--model", required=True, type=PATH_OR_NAME,
              help="Built-in name, entry-point name, module:Class or path/file.py:Class.")
@click.option("--model-args", default="", help="Constructor options: key=value,key=value (JSON scalars decoded).")
@click.option("--dataset", type=PATH_OR_NAME, default=None,
              help="Dataset folder or Hub id [default: the bundled sample].")
@click.option("--domain", type=DOMAIN_CHOICES, default="all", show_default=True,
              help="One domain's records, or all of them.")
@click.option("--split", default="test", show_default=True, help="Dataset split to score (train, validation, test).")
@click.option("--candidates", default="sbert", show_default=True,
              help="Candidate set: uses column candidates_<NAME> (sbert, openai_large, bm25, ...).")
@click.option("--out", "out_dir", required=True, type=UserPath(file_okay=False), help="Output folder.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N records per domain.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Override the plugin's batch size.")
@click.option("--overwrite", is_flag=True, help="Discard cached predictions and results in --out.")
@click.option("--bootstrap-samples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Resamples of the records for the 95% intervals; 0 leaves the intervals out.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help=f"Seed of the bootstrap resampling ({SEED_RANGE_HELP}).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def run_command(model, model_args, dataset, domain, split, candidates, out_dir, limit, batch_size, overwrite,
                bootstrap_samples, seed, quiet) -> None:
    """Run a recommender and write DIR/results.json and DIR/predictions.jsonl.

    An interrupted run resumes from DIR/predictions.jsonl; a finished one is not recomputed unless --overwrite.

    \b
    Examples:
      benchmark run --model random --out runs/random
      benchmark run --model sbert --dataset ./reddit-amazon --domain fashion --out runs/sbert-fashion
      benchmark run --model hf-vlm --model-args model=llava-hf/llava-v1.6-mistral-7b-hf,with_images=true \\
          --dataset ./reddit-amazon --out runs/llava16-img
      benchmark run --model my_plugin.py:MyRecommender --limit 50 --out runs/mine
      benchmark run --model lavic --candidates openai_large --dataset ./reddit-amazon --out runs/lavic \\
          --model-args distill_adapter=runs/lavic/distill/best,rec_adapter=runs/lavic/rec/best,item_embeddings=runs/lavic/item_embeddings-<hash>-<hash>.safetensors
    """
    from benchmark.data import DatasetError
    from reddit_amazon.openai_endpoint import MissingAPIKeyError
    from benchmark.registry import PluginError, RegistryError, parse_model_args, secret_values
    from benchmark.runner import RunConfig, RunError

    with _run_errors():
        try:
            config = RunConfig(model=model, model_args=parse_model_args(model_args), dataset=dataset, domain=domain,
                               split=split, candidates=candidates, limit=limit, batch_size=batch_size,
                               bootstrap_samples=bootstrap_samples, seed=seed)
            kept = _results_file_state(out_dir)
            results = _run_showing_plugin_bugs(config, out_dir, overwrite=overwrite, progress=not quiet)
        except (DatasetError, RegistryError, RunError, MissingAPIKeyError, FileNotFoundError, ImportError) as error:
            _fail(error)
        except PluginError as error:  # its traceback, with the secrets the one-line errors hide hidden there too,
            secrets = secret_values(parse_model_args(model_args))  # and those it was given (api_key=...)
            click.echo(redact_secrets("".join(traceback.format_exception(error)), *secrets).rstrip("\n"), err=True)
            sys.exit(1)
        except KeyboardInterrupt as error:
            _echo_interrupted(error, Path(out_dir))
            sys.exit(130)
    _echo_summary(results, Path(out_dir), rewritten=_results_file_state(out_dir) != kept)


def _echo_interrupted(error: KeyboardInterrupt, out_dir: Path) -> None:
    """What an interrupted run left (a run interrupted before its first prediction leaves nothing), and the
    plugin call it stopped (Ctrl-C while the plugin ran, or a KeyboardInterrupt it raised itself)."""
    from benchmark.registry import plugin_failure
    from benchmark.runner import PREDICTIONS_FILE

    where = plugin_failure(error)
    predictions = out_dir / PREDICTIONS_FILE
    kept = predictions.is_file() and predictions.stat().st_size > 0
    left = f"the predictions made so far are kept in {out_dir}; run the same command again to resume" if kept \
        else f"no prediction had been written to {out_dir}; run the same command again to resume (what a " \
        "recommender caches itself, as openai-chat its answers, is not asked again)"
    click.secho(f"\ninterrupted{f' in {where}' if where else ''}: {left}", fg="yellow", err=True)


def _run_showing_plugin_bugs(config: Any, out_dir: str, **options: Any) -> dict:
    """``runner.run``, where an exception a plugin raised is re-raised as ``PluginError`` chained from it: its
    traceback is printed instead of the one line the toolkit's own errors get."""
    from benchmark.registry import PluginError, plugin_failure
    from benchmark.runner import run

    try:
        return run(config, out_dir, **options)
    except (Exception, SystemExit) as error:
        where = plugin_failure(error)
        if where is None:
            raise
        # sys.exit() in a plugin ended the run in the plugin's status, without a word of who stopped it.
        exited = " (the recommender exited: a recommender returns its outputs or raises)" \
            if isinstance(error, SystemExit) else ""
        raise PluginError(f"{where}: {type(error).__name__}: {error}{exited}") from error  # redacted where printed


def _results_file_state(out_dir: str) -> tuple[int, int] | None:
    """What tells a rewritten results.json from the one a finished run left (each write replaces the file)."""
    try:
        stat = (Path(out_dir) / "results.json").stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _echo_summary(results: dict, out_dir: Path, *, rewritten: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    metrics = results["metrics"]
    groups = list(next(iter(metrics.values())).keys())
    table = Table(title=escape(f"{results['model']['spec']} on {results['split']} ({results['candidates']})"))
    table.add_column("metric")
    for group in groups:
        table.add_column(group, justify="right")
    for name in ("hr@1", "vr", "recall@5", "ndcg@5", "recall@10", "ndcg@10"):
        if name in metrics:
            cells = []
            for group in groups:
                entry = metrics[name][group]
                ci = entry["ci95"]
                cells.append("-" if entry["value"] is None else
                             f"{entry['value']:.4f}" + (f"\n[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""))
            table.add_row(name, *cells)
    counts = results.get("counts", {})
    if all("gt_in_candidates" in counts.get(group, {}) for group in groups):  # results of earlier releases lack it
        shares = [(counts[group]["gt_in_candidates"], counts[group]["gt_pairs"]) for group in groups]
        table.add_row("gt in candidates", *(f"{within / pairs:.4f}" if pairs else "-" for within, pairs in shares))
    console = Console(stderr=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:  # a file or a pipe: no 80-column wrapping
        console.width = max(console.width, console.measure(table, options=console.options.update_width(1000)).maximum)
    console.print(table)
    # The path as given: no Rich markup ("runs/[exp1]"), no wrapping, and no UnicodeEncodeError where stdout
    # cannot encode it (PYTHONIOENCODING=ascii, a C locale): click.echo writes what the stream can take.
    if rewritten:
        click.echo(f"wrote {out_dir / 'results.json'}")
    else:  # a finished run returned as it was
        click.echo(f"unchanged {out_dir / 'results.json'}")


@cli.command("retrieve")
@click.option("--retriever", type=click.Choice(["bm25", "sbert", "openai-emb"]), required=True,
              help="What ranks the catalog (openai-emb: key in OPENAI_API_KEY).")
@click.option("--retriever-args", default="", help="Options: key=value,... (model=..., device=cuda, cache_dir=...).")
@click.option("--dataset", type=PATH_OR_NAME, default=None,
              help="Dataset folder or Hub id [default: the bundled sample].")
@click.option("--domain", type=DOMAIN_CHOICES, default="all", show_default=True,
              help="One domain's records, or all of them.")
@click.option("--split", default="test", show_default=True, help="Dataset split to score (train, validation, test).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True, help="Items kept per record.")
@click.option("--with-description", is_flag=True, help="Item text = title + description (default: title).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="First N records per domain.")
@click.option("--out", "out_dir", required=True, type=UserPath(file_okay=False),
              help="Output folder (candidates.jsonl, results.json).")
@click.option("--overwrite", is_flag=True, help="Replace an earlier retrieval's files in --out.")
@click.option("--bootstrap-samples", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Resamples of the records for the 95% intervals; 0 leaves the intervals out.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help=f"Seed of the bootstrap resampling ({SEED_RANGE_HELP}).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def retrieve_command(retriever, retriever_args, dataset, domain, split, k, with_description, limit, out_dir,
                     overwrite, bootstrap_samples, seed, quiet) -> None:
    """Top-k items of each domain's full catalog per record, and that ranking's HR@1 (retrieval baselines).

    Writes DIR/candidates.jsonl (example_id, domain, candidates best-first) and DIR/results.json.
    Query text is the record's context; embeddings are cached on disk ($REDDIT_AMAZON_CACHE).

    \b
    Examples:
      benchmark retrieve --retriever sbert --out runs/sbert-catalog
      benchmark retrieve --retriever bm25 --dataset ./reddit-amazon --split test --out runs/bm25-catalog
      OPENAI_API_KEY=... benchmark retrieve --retriever openai-emb --retriever-args model=text-embedding-3-large \\
          --dataset ./reddit-amazon --out runs/openai-large-catalog
    """
    from benchmark.data import DatasetError
    from benchmark.registry import RegistryError, parse_model_args
    from benchmark.retrieve import RetrieveConfig, retrieve

    with _run_errors():
        try:
            options = parse_model_args(retriever_args, "--retriever-args")
            config = RetrieveConfig(retriever=retriever, retriever_options=options, dataset=dataset, domain=domain,
                                    split=split, k=k, with_description=with_description, limit=limit,
                                    bootstrap_samples=bootstrap_samples, seed=seed)
            kept = _results_file_state(out_dir)
            results = retrieve(config, out_dir, overwrite=overwrite, progress=not quiet)
        except (DatasetError, RegistryError, FileNotFoundError, ImportError, RuntimeError) as error:
            _fail(error)
    _echo_summary(results, Path(out_dir), rewritten=_results_file_state(out_dir) != kept)


@cli.command("report")
@click.argument("runs", nargs=-1, required=True, type=UserPath(exists=True))
@click.option("--markdown", "markdown_path", type=UserPath(dir_okay=False), default=None,
              help="Also write the Markdown table here.")
@click.option("--html", "html_path", type=UserPath(dir_okay=False), default=None, help="Write a static HTML page.")
@click.option("--title", default="Reddit-Amazon leaderboard", show_default=True,
              help="Heading of the leaderboard (Markdown and HTML).")
def report_command(runs, markdown_path, html_path, title) -> None:
    """Leaderboard of finished runs (Markdown on stdout) in the layout of the paper's Table 3.

    \b
    Examples:
      benchmark report runs/random runs/sbert runs/lavic
      benchmark report runs/* --html site/leaderboard.html --markdown leaderboard.md
    """
    from benchmark.report import is_unfinished_run, load_runs, to_html, to_markdown
    from reddit_amazon.files import remove_abandoned_temp_files, write_atomic

    _refuse_report_files_over_runs(runs, markdown_path, html_path)
    skipped = {}
    for run in runs:  # `report runs/*` while a run is going on, or beside the LaViC stages' runs/lavic/
        inner = [] if (Path(run) / "results.json").exists() else sorted(map(str, Path(run).glob("*/results.json")))
        if is_unfinished_run(run):
            skipped[run] = "the run has not finished (rerun its `benchmark run` command to finish it)"
        elif inner:
            skipped[run] = f"not a run folder; it holds the run(s) {', '.join(str(Path(p).parent) for p in inner)}"
    for run, reason in skipped.items():
        click.secho(f"skipped {run}: {reason}", fg="yellow", err=True)
    if skipped and len(skipped) == len(runs):
        _fail(ValueError("no finished run to report"))
    try:
        loaded = load_runs([run for run in runs if run not in skipped])
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    markdown = to_markdown(loaded)
    click.echo(markdown, nl=False)
    for path, text in ((markdown_path, markdown), (html_path, to_html(loaded, title) if html_path else "")):
        if path:
            try:
                folder = Path(os.path.realpath(path)).parent  # where write_atomic puts its temporary
                if folder.is_dir():  # what a report killed (kill -9) while writing this page left
                    remove_abandoned_temp_files(folder)
                write_atomic(Path(path), text.encode("utf-8"))
            except OSError as error:  # an unwritable folder, a full disk: one line naming the file asked for
                _fail(OSError(error.errno, f"cannot write {path}: {error.strerror or error}"))
    if html_path:
        click.echo(f"wrote {html_path}", err=True)


def _refuse_report_files_over_runs(runs: Sequence[str], markdown_path: str | None, html_path: str | None) -> None:
    """--markdown / --html must not land in a run folder read (``--markdown runs/a/results.json`` replaced the run's
    results with the table), on a run file read, or on each other; checked before anything is read or written."""
    read = [Path(run).resolve() for run in runs]
    if markdown_path and html_path and Path(markdown_path).resolve() == Path(html_path).resolve():
        _fail(ValueError(f"--markdown and --html are the same file ({markdown_path}); give two files"))
    for option, path in (("--markdown", markdown_path), ("--html", html_path)):
        if not path:
            continue
        target = Path(path).resolve()
        run = next((run for run in read if target == run or (run.is_dir() and target.is_relative_to(run))), None)
        if run is not None:
            _fail(ValueError(f"{option} {path} is {'in the run folder' if run != target else 'the run file'} {run}, "
                             "which the report reads; write it outside the runs"))


@cli.command("compare")
@click.argument("run_a", type=UserPath(exists=True, file_okay=False))
@click.argument("run_b", type=UserPath(exists=True, file_okay=False))
@click.option("--bootstrap-samples", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Paired resamples of the shared records for the 95% intervals and p-values.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help=f"Seed of the bootstrap resampling ({SEED_RANGE_HELP}).")
def compare_command(run_a, run_b, bootstrap_samples, seed) -> None:
    """Paired bootstrap difference A − B (95% CI, two-sided p) per domain, over the records both runs scored,
    and McNemar's exact test of HR@1 and VR (records where A or B scored more, exact two-sided p).

    RUN_A and RUN_B are `benchmark run` folders (a `benchmark retrieve` folder has no per-record predictions).

    \b
    Example:
      benchmark compare runs/lavic runs/llava16
    """
    from benchmark.compare import compare_runs, to_markdown

    try:
        comparison = compare_runs(run_a, run_b, bootstrap_samples, seed)
    except (FileNotFoundError, ValueError) as error:
        _fail(error)
    click.echo(to_markdown(comparison, run_a, run_b), nl=False)


@cli.command("list")
def list_command() -> None:
    """Recommenders that --model accepts by name (built-ins and installed entry points).

    \b
    Example:
      benchmark list
    """
    from benchmark import registry

    rows = [(name, f"{target}  (built-in)") for name, target in registry.BUILTIN.items()]
    used: set[str] = set(registry.BUILTIN)
    for ep in registry.entry_points(group=registry.ENTRY_POINT_GROUP):
        where = f"entry point, {ep.dist.name if ep.dist else '?'}"
        # --model takes the built-in, else the first entry point of a name: a plugin shadowed so must say so.
        shadowed = "; not used: the built-in of that name wins" if ep.name in registry.BUILTIN else \
            "; not used: an entry point listed above has that name" if ep.name in used else ""
        used.add(ep.name)
        rows.append((ep.name, f"{ep.value}  ({where}{shadowed})"))
    width = max(len(name) for name, _ in rows)
    for name, target in rows:
        click.echo(f"{name:{width}}  {target}")

if __name__ == "__main__":
    main()
