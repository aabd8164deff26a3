"""Running one datatrove step as tasks on the local, Slurm or Ray executor, and nothing left behind: the local
executor's console lines and per-task logs kept quiet and free of the caller's variables, ``DATATROVE_*`` variables
and loguru's rules set back, worker processes of an interrupted run stopped, a Slurm job waited for."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from reddit_amazon import signals_at_fork

if TYPE_CHECKING:
    from datatrove.pipeline.base import PipelineStep

Executor = Literal["local", "slurm", "ray"]


class ExecutionOptions(Protocol):
    """How to run a step's tasks (the Reddit stage's options hold these among others)."""

    executor: Executor
    workers: int  # tasks run at once (local / ray); slurm: the job array's limit when > 1, else none
    slurm_partition: str | None
    slurm_time: str
    slurm_mem_per_cpu_gb: int
    slurm_venv: str | None
    poll_interval_s: float  # how often to look for finished tasks on slurm / ray


def local_start_method(available: Sequence[str]) -> str:
    """How the local executor starts worker processes, of the start methods ``available`` on this platform.

    datatrove's default, "forkserver", re-imports everything in each worker (seconds on a busy machine, more than a
    small scan takes); "fork" starts them in ~0.1 s. The stage forks only between its own steps, when no threads of
    its own run (Python 3.12+ still warns under pytest: fsspec's I/O thread, started by datatrove's DataFolder, runs;
    fsspec makes a new one in the child). macOS keeps "forkserver" (a forked process there may crash in system
    libraries); Windows has "spawn" only, and datatrove refuses a start method the platform lacks.
    """
    if sys.platform == "linux" and "fork" in available:
        return "fork"
    return "forkserver" if "forkserver" in available else "spawn"


LOCAL_START_METHOD = local_start_method(multiprocessing.get_all_start_methods())


def _quiet_local_executor():
    """datatrove's local executor with task logs in ``logging_dir/logs`` only (a task's error is raised to the caller,
    with a note naming the task's log, which holds its traceback).

    In-process, datatrove's per-task INFO logs would bury the progress bars and the funnel; datatrove
    prints to the console only for local rank 0, so every task runs with a local rank above 0.
    """
    from datatrove.executor import LocalPipelineExecutor

    class QuietLocalPipelineExecutor(LocalPipelineExecutor):
        def _launch_run_for_rank(self, *args, **kwargs):
            # a worker started by "forkserver" or "spawn" (macOS, Windows) does not inherit the disabled logger of
            # run_on_executor, and would print "N/M tasks completed." over the progress bars. Imported here: the
            # class is pickled by value into such a worker, and loguru's logger holds the console streams.
            from datatrove.utils.logging import logger

            logger.disable("datatrove.executor.local")
            return super()._launch_run_for_rank(*args, **kwargs)

        def _run_for_rank(self, rank: int, local_rank: int = 0, node_rank: int = -1):
            try:
                with _task_logging():
                    return super()._run_for_rank(rank, local_rank + 1, node_rank)
            except Exception as error:  # raised to the caller, whose Error: line shows the note (a worker's pickled)
                note = f"traceback in {self.logging_dir.resolve_paths(f'logs/task_{rank:05d}.log')}"
                error.__notes__ = [*getattr(error, "__notes__", ()), note]  # add_note() is Python 3.11's
                raise

    return QuietLocalPipelineExecutor


@contextmanager
def _task_logging() -> Iterator[None]:
    """datatrove's task log handlers (the task's file and the console) added in the block print a task's exception
    without the values of variables (loguru's ``diagnose``) and without the frames above the task (``backtrace``),
    and the console handler prints no exception at all.

    Run here, a task's stack holds the caller's frames: its traceback showed the stage's options, ``--salt``
    included, in the task log and on the console. The exception itself is raised to the caller (the command-line
    tools make it one ``Error:`` line naming what failed, a full disk's file): on the console its ~50-line
    traceback only buried that line. The task log keeps it."""
    from datatrove.utils.logging import logger

    add = logger.add

    def add_without_variables(sink, **options):
        if sink is sys.stderr:
            options["filter"] = _without_exception
        return add(sink, diagnose=False, backtrace=False, **options)

    logger.add = add_without_variables
    try:
        yield
    finally:
        del logger.add  # the class's method again


def _without_exception(record: dict) -> bool:
    return record["exception"] is None


def _task_log_folder(path: Path):
    """``path`` as datatrove's logging folder: task logs in UTF-8 whatever the locale, keeping the previous run's."""
    from reddit_amazon.task_log_folder import TaskLogFolder

    return TaskLogFolder(str(path))


def check_executor(options: ExecutionOptions) -> None:
    """Refuse an executor that cannot run here (no partition or no ``sbatch`` for slurm, Ray not installed, an
    unknown name), with what to do instead: a caller checks before its slow work (listing a big tree of dumps), not
    at its first step."""
    if options.executor == "slurm":
        if not options.slurm_partition:
            raise ValueError("executor 'slurm' needs a partition (RedditStageOptions.slurm_partition)")
        if shutil.which("sbatch") is None:  # else datatrove's bare "No such file or directory: 'sbatch'"
            raise FileNotFoundError("executor 'slurm' needs Slurm's sbatch, and there is none on PATH: run on a "
                                    "machine that submits Slurm jobs, or use the local or ray executor")
    elif options.executor == "ray":
        if importlib.util.find_spec("ray") is None:
            # named: the command line shows a missing extra's module as one Error: line, not a traceback
            raise ModuleNotFoundError("executor 'ray' needs Ray: pip install 'reddit-amazon[cluster]'", name="ray")
    elif options.executor != "local":
        raise ValueError(f"unknown executor {options.executor!r}: use local, slurm or ray")


def run_on_executor(step: PipelineStep, tasks: int, logging_dir: Path, options: ExecutionOptions) -> None:
    """Run ``step`` as ``tasks`` datatrove tasks and return once every task has completed."""
    check_executor(options)
    workers = max(1, min(options.workers, tasks))
    if options.executor == "local":
        executor = _quiet_local_executor()(
            [step], tasks=tasks, workers=workers, logging_dir=_task_log_folder(logging_dir),
            start_method=LOCAL_START_METHOD,
        )
    elif options.executor == "slurm":
        from datatrove.executor import SlurmPipelineExecutor

        executor = SlurmPipelineExecutor(
            [step],
            tasks=tasks,
            time=options.slurm_time,
            partition=options.slurm_partition,
            cpus_per_task=1,
            mem_per_cpu_gb=options.slurm_mem_per_cpu_gb,
            workers=options.workers if options.workers > 1 else -1,
            job_name=f"reddit-amazon-{logging_dir.name}",
            logging_dir=_task_log_folder(logging_dir),
            venv_path=options.slurm_venv,
        )
    else:  # ray: check_executor refused any other name
        from datatrove.executor import RayPipelineExecutor

        executor = RayPipelineExecutor([step], tasks=tasks, workers=workers, logging_dir=_task_log_folder(logging_dir))
    if options.executor == "local":
        with _executor_log_lines_off(), datatrove_variables_kept(), workers_stopped_if_interrupted():
            signals_at_fork.guard_outermost()  # over the hooks of loguru, filelock, ... imported since run_cli's
            executor.run()
    else:
        executor.run()
    # Slurm returns once the job is submitted: wait for the completion markers while the job is queued
    # or running. Local and Ray return when their tasks have ended, so a missing marker is a failure.
    while incomplete := executor.get_incomplete_ranks(skip_completed=True):
        if options.executor != "slurm" or not _slurm_job_queued(str(executor.job_id)):
            if incomplete := executor.get_incomplete_ranks(skip_completed=True):  # a marker may have just landed
                raise RuntimeError(f"{logging_dir.name}: tasks {incomplete} did not complete "
                                   f"(see {logging_dir}/logs and {logging_dir}/slurm_logs)")
            return
        time.sleep(options.poll_interval_s)


#: How long a worker left behind by an interrupted run has to end on SIGTERM before it is killed.
WORKER_STOP_WAIT_S = 5.0


@contextmanager
def workers_stopped_if_interrupted() -> Iterator[None]:
    """Processes started in the block and still running when it raises (Ctrl-C, SIGTERM) are terminated and joined.

    datatrove's local executor shuts its ``multiprocess.Manager()`` down in a ``finally`` that only covers the time
    after the manager was assigned: a Ctrl-C while it started left the manager process (it ignores SIGINT) serving
    forever, and the build, having printed "Aborted!", waited on it forever at exit (multiprocess joins the
    children it started). A worker that ignores SIGTERM is killed after :data:`WORKER_STOP_WAIT_S`."""
    import multiprocess

    libraries = (multiprocess, multiprocessing)
    before = {id(process) for library in libraries for process in library.active_children()}
    try:
        yield
    except BaseException:
        left = [process for library in libraries for process in library.active_children()
                if id(process) not in before]
        for process in left:
            process.terminate()
        deadline = time.monotonic() + WORKER_STOP_WAIT_S
        for process in left:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        raise


@contextmanager
def _executor_log_lines_off() -> Iterator[None]:
    """The local executor's loguru lines (its closing stats block: stats.json has them) off in the block, and
    loguru's enable/disable rules set back as they were after it. ``logger.enable`` instead left the executor's
    module enabled for good, over a caller's ``logger.disable("datatrove")``, for the rest of its session. loguru
    has no public way to read its rules: they are its core's ``activation_list``, replaced on each change."""
    from datatrove.utils.logging import logger

    core = logger._core
    rules = getattr(core, "activation_list", None)
    logger.disable("datatrove.executor.local")
    try:
        yield
    finally:
        if rules is None:  # a loguru that keeps its rules elsewhere
            logger.enable("datatrove.executor.local")
        else:
            with core.lock:
                core.activation_list = rules
                core.enabled = {}  # loguru's per-module cache of the rules' answers, filled again as modules log


@contextmanager
def datatrove_variables_kept() -> Iterator[None]:
    """os.environ's ``DATATROVE_*`` variables set back as they were after the block. datatrove sets them for each
    task it runs; with ``workers=1`` that is in the calling process (a notebook, a script calling ``run_build``),
    which would keep them and pass them to every subprocess it starts afterwards."""
    before = {name: value for name, value in os.environ.items() if name.startswith("DATATROVE_")}
    try:
        yield
    finally:
        for name in [name for name in os.environ if name.startswith("DATATROVE_") and name not in before]:
            del os.environ[name]
        os.environ.update(before)


def _slurm_job_queued(job_id: str) -> bool:
    """Whether Slurm still has the job (pending, running or requeued); True when ``squeue`` cannot tell."""
    try:
        answer = subprocess.run(["squeue", "--noheader", "--format=%i", f"--jobs={job_id}"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if answer.returncode != 0:
        return "invalid job id" not in answer.stderr.lower()  # a finished job has left the controller
    return bool(answer.stdout.strip())
