"""`reddit-amazon`: build, import, export and describe Reddit-Amazon dataset folders.

Each command lives in the module of its concept; this file only assembles the group.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from reddit_amazon import __version__
from reddit_amazon.cli_errors import user_errors
from reddit_amazon.cli_paths import PATH_OR_NAME, OutputPath, UserPath
from reddit_amazon.hub_push import push_options

if TYPE_CHECKING:
    from reddit_amazon.run_log import RunLog

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
      reddit-amazon push reddit-amazon me/reddit-amazon
      reddit-amazon remove reddit-amazon --requests removals.txt
      reddit-amazon sample-path                    # where the bundled sample dataset lives
    """


def main() -> None:
    from reddit_amazon.cli_errors import run_cli

    run_cli(cli, "reddit-amazon")


@contextmanager
def input_errors() -> Iterator[None]:
    """Input problems (a damaged release file, a folder in the way, an unreadable manifest or one lacking a field)
    end with one ``Error:`` line naming them; anything else, a KeyError included, is a bug and keeps its traceback."""
    with user_errors(ValueError, OSError):
        yield


@cli.command("sample-path")
def sample_path_command() -> None:
    """Print the folder of the bundled sample dataset.

    \b
    Example:
      python -c "import datasets; print(datasets.load_dataset('$(reddit-amazon sample-path)', 'home'))"
    """
    from reddit_amazon.sample import sample_dataset_path

    click.echo(str(sample_dataset_path()))


@cli.command("import-lavic")
@click.argument("src", type=UserPath(exists=True, file_okay=False, path_type=str))
@click.option("--out", default="reddit-amazon", show_default=True, type=OutputPath(path_type=str),
              help="Dataset folder to write (replaced atomically).")
@click.option("--repair-text", is_flag=True,
              help="Repair mojibake (UTF-8 read as Latin-1) with ftfy; recorded in the manifest. "
                   "Off by default so that export reproduces the release exactly.")
@click.option("--version", "dataset_version", default=None, help="Dataset version (semver) to record.")
def import_lavic_command(src: str, out: str, repair_text: bool, dataset_version: str | None) -> None:
    """Import the LaViC authors' release (SRC with all_beauty/, amazon_fashion/, amazon_home/).

    Every record and every gt ASIN is kept; counts are printed. valid -> validation;
    candidates_st -> candidates_sbert; candidates_gpt_large -> candidates_openai_large.

    \b
    Examples:
      reddit-amazon import-lavic LaViC/data --out reddit-amazon
      reddit-amazon import-lavic LaViC/data --out reddit-amazon-clean --repair-text
      python -c "import datasets; print(datasets.load_dataset('reddit-amazon', 'fashion'))"
    """
    from reddit_amazon import DATASET_VERSION
    from reddit_amazon.lavic_release import import_release

    with input_errors():
        report = import_release(src, out, repair_text=repair_text, version=dataset_version or DATASET_VERSION)
    for line in report.lines():
        click.echo(line)
    click.echo(f"wrote {out}")


@cli.command("export-lavic")
@click.argument("dataset", type=PATH_OR_NAME)
@click.option("--out", required=True, type=UserPath(path_type=str),
              help="Folder to write the release layout to: new, empty or an earlier export (its files are replaced); "
                   "a dataset folder or a folder of other files is refused.")
def export_lavic_command(dataset: str, out: str) -> None:
    """Write a dataset folder (or Hub id) in the LaViC authors' release format.

    \b
    Examples:
      reddit-amazon export-lavic reddit-amazon --out lavic-format/
      diff <(cat LaViC/data/amazon_home/valid.jsonl) lavic-format/amazon_home/valid.jsonl
    """
    from reddit_amazon.lavic_release import export_release

    with input_errors():
        written = export_release(dataset, out)
    for domain, splits in written.items():
        for split, n in splits.items():
            click.echo(f"{domain}/{split}: {n} records")
    click.echo(f"wrote {out}")


@cli.command("card")
@click.argument("dataset_dir", type=UserPath(exists=True, file_okay=False, path_type=str))
def card_command(dataset_dir: str) -> None:
    """Regenerate DATASET_DIR/README.md (dataset card and datasheet) from manifest.json and the Parquet shards.

    Every number in the card is computed from the folder, so run this after editing the manifest
    (the build and `write_dataset` already run it). A folder whose shards no longer match the manifest's
    fingerprint and row counts is refused (`reddit-amazon verify` names the difference).

    \b
    Examples:
      reddit-amazon card reddit-amazon/
      reddit-amazon card my-build/ && head -40 my-build/README.md
    """
    from pathlib import Path

    from reddit_amazon.dataset_folder import MANIFEST, refresh_card

    if not (Path(dataset_dir) / MANIFEST).is_file():
        raise click.ClickException(f"{dataset_dir} is not a reddit-amazon dataset folder (no {MANIFEST})")
    with input_errors():
        refresh_card(dataset_dir)
    click.echo(f"wrote {Path(dataset_dir) / 'README.md'}")


@cli.command("verify")
@click.argument("dataset_dir", type=UserPath(exists=True, file_okay=False, path_type=str))
def verify_command(dataset_dir: str) -> None:
    """Check DATASET_DIR against its manifest: content fingerprint and rows per config and split, and that
    README.md's configs load exactly those shards and its dataset_info names the manifest's fingerprint and rows
    (`reddit-amazon card` rewrites a damaged card).

    Exits 1 naming what differs (a shard edited, added or lost since the folder was written).

    \b
    Examples:
      reddit-amazon verify reddit-amazon/
      reddit-amazon verify "$(reddit-amazon sample-path)"
    """
    from reddit_amazon.dataset_folder import verify

    with input_errors():
        problems = verify(dataset_dir)
    if problems:
        raise click.ClickException(f"{dataset_dir} does not match its manifest:\n  " + "\n  ".join(problems))
    click.echo(f"{dataset_dir}: matches its manifest")


@cli.command("remove")
@click.argument("dataset_dir", type=OutputPath(exists=True, file_okay=False, path_type=str))
@click.option("--requests", "requests_file", required=True, type=UserPath(exists=True, dir_okay=False, path_type=str),
              help="Removal requests, one a line ('#' comments): t1_<comment id>, t3_<submission id>, a bare Reddit "
                   "id, an example_id or thread_id, an author pseudonym (u_...), u/<name> (with --salt).")
@click.option("--version", "dataset_version", default=None,
              help="Version of the result (semver, above the folder's) [default: the folder's, MINOR + 1].")
@click.option("--salt", envvar="REDDIT_AMAZON_SALT", show_envvar=True,
              help="The build's pseudonym salt, to turn u/<name> requests into the pseudonyms turns[].author holds.")
def remove_command(dataset_dir: str, requests_file: str, dataset_version: str | None, salt: str | None) -> None:
    """Drop the records removal requests ask for from DATASET_DIR (built or imported), as a new version.

    Every other record keeps its split and content; a record whose recommending comment is removed takes the
    replies quoting it with it. The folder is rewritten atomically (shards, manifest, card) under its writer lock;
    the manifest records how many requests, how many records were dropped per domain and split, and with --salt a
    digest of the normalised request list keyed with it, never the ids themselves. Requests matching nothing are
    counted; when nothing matches, the folder is left as it is. A line of no known form is an error naming
    file:line, nothing changed. A salt other than the build's (its manifest records a check of that salt, never the
    salt) is refused where a u/<name> line needs it, nothing changed; a folder whose manifest has no such check
    (built before it was recorded) gets a warning that the salt cannot be checked.

    \b
    Examples:
      reddit-amazon remove reddit-amazon --requests removals.txt            # 1.0.1 -> 1.1.0
      reddit-amazon remove reddit-amazon --requests removals.txt --version 2.0.0
      reddit-amazon verify reddit-amazon && reddit-amazon push reddit-amazon me/reddit-amazon
    """
    from reddit_amazon.removals import read_requests, remove_from_folder

    with input_errors():
        done = remove_from_folder(dataset_dir, read_requests(requests_file), version=dataset_version, salt=salt)
    if done.warning:
        click.secho(f"warning: {done.warning}", err=True, fg="yellow")
    removal = done.removal
    for domain, splits in removal.dropped.items():
        if any(splits.values()):
            click.echo(f"{domain}: dropped " + ", ".join(f"{split} {n}" for split, n in splits.items()))
    click.echo(f"{removal.requests} request(s), {removal.unmatched} matching no record; "
               f"{removal.records_dropped} record(s) dropped")
    if done.manifest is None:
        click.echo(f"{dataset_dir} is unchanged (no record matched)")
    else:
        click.echo(f"wrote {dataset_dir}: version {done.version} ({done.manifest['fingerprint'][:12]})")


@cli.command("push")
@click.argument("dataset_dir", type=UserPath(exists=True, file_okay=False, path_type=str))
@click.argument("repo_id")
@push_options
def push_command(dataset_dir: str, repo_id: str, private: bool, revision: str | None) -> None:
    """Publish DATASET_DIR (built or imported) as the Hub dataset repo REPO_ID, in one commit, and tag it vVERSION.

    The folder is first checked against its manifest as `reddit-amazon verify` checks it; a folder that differs is
    refused, nothing sent. The Hub's README.md loads REPO_ID (the local one is left as it is); shards of an
    earlier version that this one does not have are deleted, the repo's other files kept. A version already
    published with other content is refused. The token comes from HF_TOKEN (else `hf auth login`). After pushing a
    version that honours removal requests, the repo's earlier tags, other branches and history, which still serve
    the records removed, are named on stderr with what to do; nothing is deleted.

    \b
    Examples:
      reddit-amazon push reddit-amazon me/reddit-amazon
      reddit-amazon push reddit-amazon me/reddit-amazon --revision v1.1-candidate   # a new branch beside main
      python -c "import datasets; print(datasets.load_dataset('me/reddit-amazon', 'fashion', revision='v1.0.0'))"
    """
    import os

    from reddit_amazon.dataset_folder import MANIFEST, push_to_hub
    from reddit_amazon.hub_push import PushRefused

    if not (Path(dataset_dir) / MANIFEST).is_file():
        raise click.ClickException(f"{dataset_dir} is not a reddit-amazon dataset folder (no {MANIFEST})")
    # A version published with other content, an unreadable manifest, a connection lost, the Hub's answers: one line
    with input_errors():
        try:
            commit = push_to_hub(dataset_dir, repo_id, private=private, revision=revision,
                                 token=os.environ.get("HF_TOKEN"))
        except PushRefused as error:  # no token, or a folder that differs from its manifest: the message is the line
            raise click.ClickException(str(error)) from error
    click.echo(f"pushed {dataset_dir} to {repo_id}" + (f" (branch {revision})" if revision else "") + f": {commit}")


from reddit_amazon.build import build_command  # noqa: E402  (imports only click and orjson at load time)

cli.add_command(build_command)


@cli.command("reddit-stage")
@click.argument("inputs", nargs=-1, required=True, type=UserPath(exists=True, path_type=Path))
@click.option("--workdir", required=True, type=OutputPath(path_type=Path), help="Work folder (shared on a cluster).")
@click.option("--salt", envvar="REDDIT_AMAZON_SALT", show_envvar=True,
              help="Pseudonymisation salt [default: random, kept in the workdir]; safer in the environment than "
                   "on a command line, which other users of the machine can list.")
@click.option("--resolve-short-links", is_flag=True, help="Resolve amzn.to / a.co / ... links (network).")
@click.option("--short-link-cache", type=UserPath(path_type=Path), help="SQLite cache of resolved short links.")
@click.option("--short-link-deadline", type=click.FloatRange(0, min_open=True), default=60.0, show_default=True,
              metavar="SECONDS", help="Time one short link may take, retries and redirect hops included; then it "
              "is unresolved ('deadline') and asked again by the next run.")
@click.option("--executor", type=click.Choice(["local", "slurm", "ray"]), default="local", show_default=True,
              help="Where the stage's tasks run (datatrove's executor of that name).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Tasks run at once.")
@click.option("--tasks", type=click.IntRange(1), help="Scan tasks [default: one per file].")
@click.option("--buckets", type=click.IntRange(1), help="Rebuild tasks / output shards [default: tasks, and one "
              "per 64 MiB of input, at most 256].")
@click.option("--partition", help="Slurm partition (with --executor slurm).")
@click.option("--slurm-time", default="24:00:00", show_default=True, help="Slurm time limit per task.")
@click.option("--quiet", is_flag=True, help="No progress bars (the funnel, warnings and errors are still printed).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress bars; --no-progress is the same as --quiet.")
def reddit_stage_command(inputs, workdir, salt, resolve_short_links, short_link_cache, short_link_deadline, executor,
                         workers, tasks, buckets, partition, slurm_time, quiet, progress) -> None:
    """Only the Reddit stage of `build`: dumps -> WORKDIR/reddit/conversations/*.jsonl + funnel.json.

    INPUTS are dump files or folders: RC_*.zst, RS_*.zst, <sub>_comments.zst, <sub>_submissions.zst,
    .jsonl / .ndjson, and older .bz2 / .xz / .gz months. Rerun the same command after an interruption: finished files are not read again.

    \b
    Examples:
      reddit-amazon reddit-stage dumps/RC_2023-01.zst dumps/RS_2023-01.zst --workdir work/
      reddit-amazon reddit-stage dumps/ --workdir work/ --workers 8 --resolve-short-links
      reddit-amazon reddit-stage /shared/dumps --workdir /shared/work --executor slurm --partition cpu --tasks 96
      reddit-amazon reddit-stage dumps/ --workdir work/ --quiet > funnel.json
    """
    import orjson

    from reddit_amazon.pipeline import RedditStageOptions, bad_line_warnings, missing_dump_warnings, run_reddit_stage
    from reddit_amazon.progress import quiet as without_bars
    from reddit_amazon.stage_executor import check_executor

    progress = progress and not quiet

    options = RedditStageOptions(
        salt=salt, resolve_short_links=resolve_short_links, short_link_cache=short_link_cache,
        short_link_deadline_s=short_link_deadline, executor=executor,
        workers=workers, tasks=tasks, buckets=buckets, progress=progress, slurm_partition=partition,
        slurm_time=slurm_time,
    )
    if partition and executor != "slurm":
        raise click.UsageError("--partition is for --executor slurm")
    if executor == "slurm" and not partition:
        raise click.UsageError("--executor slurm needs --partition")
    with input_errors():  # no sbatch, no Ray: refused as build's option check refuses it, before a run log is made
        check_executor(options)
    with input_errors(), _reddit_stage_log(workdir, salt) as log:
        def say(line: str, **style) -> None:  # on stderr, and in the run log
            click.secho(line, err=True, **style)
            log.line(line)

        with without_bars(not progress), log.stage("reddit"):  # an empty salt, an unwritable workdir ...
            result = run_reddit_stage(list(inputs), workdir, options)
        click.echo(orjson.dumps(result.funnel, option=orjson.OPT_INDENT_2).decode())
        for folder in result.left_out:
            say(f"warning: {folder.line()}", fg="yellow")
        for path, reason in result.incomplete_reasons.items():
            say(f"incomplete: {path}: {reason}", fg="yellow")
        for warning in bad_line_warnings(result.funnel):
            say(f"bad lines: {warning}", fg="yellow")
        for warning in missing_dump_warnings(result.funnel):
            say(f"warning: {warning}", fg="yellow")
        if result.unresolved_short_links:
            say(f"{len(result.unresolved_short_links)} short link(s) could not be resolved: "
                f"{workdir / 'reddit' / 'unresolved_short_links.txt'}", fg="yellow")
        # stdout holds the funnel JSON alone (`reddit-stage ... > funnel.json`, `| jq`); the summary is a log line
        say(f"{result.funnel['threads_rebuilt']} conversations in {len(result.shards)} shard(s) under "
            f"{workdir / 'reddit' / 'conversations'}")


@contextmanager
def _reddit_stage_log(workdir: Path, salt: str | None) -> Iterator[RunLog]:
    """The run log of `reddit-stage` in ``workdir`` (see :mod:`reddit_amazon.run_log`); none in a workdir that is
    or lies in a dataset folder, which the stage refuses before writing anything."""
    from reddit_amazon.cli_errors import shown_error_line
    from reddit_amazon.dataset_folder import dataset_folder_holding
    from reddit_amazon.run_log import RunLog, open_run_log

    if dataset_folder_holding(workdir) is not None:
        yield RunLog(None)
        return
    with open_run_log(workdir, "reddit-stage", _recorded_command(click.get_current_context()), salt,
                      error_line=lambda error: shown_error_line(error, ValueError, OSError)) as log:
        yield log


#: Where an option's value was given (not left at its default).
_GIVEN = (click.core.ParameterSource.COMMANDLINE, click.core.ParameterSource.ENVIRONMENT)


def _recorded_command(context: click.Context) -> str:
    """The command line of ``context``'s command, options left at their defaults left out, the salt redacted."""
    import shlex

    from reddit_amazon.files import printable_path

    args = ["reddit-amazon", context.info_name or ""]
    for param in context.command.params:
        value = context.params.get(param.name)
        if isinstance(param, click.Argument):
            args += [str(v) for v in value or ()]
        elif value is not None and context.get_parameter_source(param.name) in _GIVEN:
            flag = param.opts[0] if value is not False or not param.secondary_opts else param.secondary_opts[0]
            args += [flag] if isinstance(value, bool) else [flag, "<redacted>" if param.name == "salt" else str(value)]
    return printable_path(shlex.join(args))


if __name__ == "__main__":
    main()
