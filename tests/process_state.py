"""A snapshot of the process-global state a library call could leave changed, and the differences of two.

A library function called from a notebook or a script shares the caller's process: it should leave the
environment, warning filters, loggers, RNGs, torch settings, signal handlers, ``sys.path``, the working folder,
the umask and the caller's threads as it found them, unless it documents otherwise. ``snapshot()`` before and
after a call, then ``changes(before, after)`` lists each difference as one readable line.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import random
import signal
import socket
import sys
import threading
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcessState:
    environ: dict[str, str]
    warning_filters: list[tuple]
    showwarning: Any
    loggers: dict[str, tuple]  # name -> (level, handlers, propagate, disabled); existing loggers only
    logging_disabled: int
    loguru_handlers: tuple | None  # ids, once loguru is imported
    loguru_rules: tuple | None  # its enable/disable rules
    python_rng: Any
    numpy_rng: tuple | None
    torch: dict[str, Any] | None
    start_method: str | None
    signals: dict[str, Any]
    sys_path: list[str]
    cwd: str
    umask: int
    threads: set[str]
    child_processes: int
    open_fds: set[str]
    atexit_callbacks: int
    hooks: dict[str, Any]
    default_socket_timeout: float | None
    library_switches: dict[str, Any]


def snapshot() -> ProcessState:
    return ProcessState(
        environ=dict(os.environ),
        warning_filters=list(warnings.filters),
        showwarning=warnings.showwarning,
        loggers=_loggers(),
        logging_disabled=logging.root.manager.disable,
        loguru_handlers=_loguru("handlers"),
        loguru_rules=_loguru("activation_list"),
        python_rng=random.getstate(),
        numpy_rng=_numpy_rng(),
        torch=_torch(),
        start_method=multiprocessing.get_start_method(allow_none=True),
        signals={signal.strsignal(number) or str(number): signal.getsignal(number) for number in signal.valid_signals()
                 if number not in (signal.SIGKILL, signal.SIGSTOP)},
        sys_path=list(sys.path),
        cwd=os.getcwd(),
        umask=_umask(),
        threads={f"{t.name} (daemon={t.daemon})" for t in threading.enumerate()},
        child_processes=len(multiprocessing.active_children()),
        open_fds=_open_fds(),
        atexit_callbacks=atexit._ncallbacks(),
        hooks={"sys.excepthook": sys.excepthook, "threading.excepthook": threading.excepthook,
               "sys.unraisablehook": sys.unraisablehook, "sys.stdout": sys.stdout, "sys.stderr": sys.stderr,
               "recursion limit": sys.getrecursionlimit(), "switch interval": sys.getswitchinterval()},
        default_socket_timeout=socket.getdefaulttimeout(),
        library_switches=_library_switches(),
    )


def changes(before: ProcessState, after: ProcessState) -> list[str]:
    """One line per difference between two snapshots (empty: the process was left as it was)."""
    lines = []
    for field in fields(ProcessState):
        old, new = getattr(before, field.name), getattr(after, field.name)
        if isinstance(old, dict) and isinstance(new, dict):
            lines += [f"{field.name}[{key}]: {old.get(key, '<absent>')!r} -> {new.get(key, '<absent>')!r}"
                      for key in sorted(old.keys() | new.keys(), key=str) if old.get(key, _MISSING) != new.get(key, _MISSING)]
        elif isinstance(old, set):
            lines += [f"{field.name}: + {item}" for item in sorted(new - old)]
            lines += [f"{field.name}: - {item}" for item in sorted(old - new)]
        elif field.name == "warning_filters":
            lines += [f"warning_filters: + {entry}" for entry in new if entry not in old]
            lines += [f"warning_filters: - {entry}" for entry in old if entry not in new]
            if not lines and old != new:
                lines.append("warning_filters: reordered")
        elif _differ(old, new):
            lines.append(f"{field.name}: changed" if field.name.endswith("rng") else f"{field.name}: {old!r} -> {new!r}")
    return lines


_MISSING = object()


def _differ(old: Any, new: Any) -> bool:
    try:
        import numpy as np

        if isinstance(old, tuple) and any(isinstance(part, np.ndarray) for part in old):
            return not all(np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b for a, b in zip(old, new))
    except ImportError:
        pass
    return old != new


def _loggers() -> dict[str, tuple]:
    named = {"<root>": logging.root, **{name: logger for name, logger in logging.root.manager.loggerDict.items()
                                        if isinstance(logger, logging.Logger)}}
    return {name: (logger.level, tuple(id(h) for h in logger.handlers), logger.propagate, logger.disabled)
            for name, logger in named.items()}


def _loguru(part: str) -> tuple | None:
    if "loguru" not in sys.modules:
        return None
    from loguru import logger

    return tuple(sorted(getattr(logger._core, part)))  # no public reader of either


def _numpy_rng() -> tuple | None:
    numpy = sys.modules.get("numpy")
    return None if numpy is None else numpy.random.get_state()


def _torch() -> dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return {"rng": bytes(torch.random.get_rng_state().numpy()).hex()[:64] + "...",
            "threads": torch.get_num_threads(), "interop threads": torch.get_num_interop_threads(),
            "deterministic": torch.are_deterministic_algorithms_enabled(), "default dtype": torch.get_default_dtype(),
            "grad enabled": torch.is_grad_enabled(), "matmul precision": torch.get_float32_matmul_precision(),
            "cudnn benchmark": torch.backends.cudnn.benchmark, "anomaly": torch.is_anomaly_enabled()}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _open_fds() -> set[str]:
    folder = Path("/proc/self/fd")
    if not folder.is_dir():
        return set()
    found = set()
    for entry in folder.iterdir():
        try:
            target = os.readlink(entry)
        except OSError:  # the listing's own descriptor, closed by now
            continue
        if not target.startswith(("anon_inode:", "pipe:", "socket:")):
            found.add(f"{entry.name} -> {target}")
    return found


def _library_switches() -> dict[str, Any]:
    switches: dict[str, Any] = {}
    if "reddit_amazon.progress" in sys.modules:
        switches["reddit_amazon.progress bars shown"] = sys.modules["reddit_amazon.progress"].bars_shown()
    if "datasets" in sys.modules:
        import datasets

        switches["datasets progress bars"] = datasets.is_progress_bar_enabled()
        switches["datasets caching"] = datasets.is_caching_enabled()
        switches["datasets verbosity"] = datasets.logging.get_verbosity()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub import utils as hub

        switches["hub progress bars disabled"] = hub.are_progress_bars_disabled()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        switches["transformers progress bars"] = transformers_logging.is_progress_bar_enabled()
        switches["transformers verbosity"] = transformers_logging.get_verbosity()
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        switches["tqdm monitor interval"] = tqdm.monitor_interval
        switches["tqdm open bars"] = len(getattr(tqdm, "_instances", ()))
    if "PIL.Image" in sys.modules:
        from PIL import Image, ImageFile

        switches["PIL MAX_IMAGE_PIXELS"] = Image.MAX_IMAGE_PIXELS
        switches["PIL LOAD_TRUNCATED_IMAGES"] = ImageFile.LOAD_TRUNCATED_IMAGES
    return switches
