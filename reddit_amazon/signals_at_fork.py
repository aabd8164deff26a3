"""Ctrl-C and SIGTERM held back while the main thread forks, so that they cannot be lost with a lock.

``os.fork()`` runs at-fork hooks (logging's, loguru's, filelock's) that take a lock before the fork and release it
after. An exception raised in a hook is printed as "Exception ignored in: ..." and dropped: a KeyboardInterrupt that
run_cli's signal handler raised there was lost (the build went on as if no Ctrl-C came) and the hook's lock stayed
taken, so the next thread to log (the relevance stage's calls) waited for it forever.

run_cli's handlers ask :func:`deferred` first. Inside a fork it holds the signal back, and once the last hook has run
a helper thread sends it to the main thread again, whose handler then runs in the code that called ``os.fork()``.
Sent from the hook itself, it would be handled in the hook (Python runs handlers after each call, and
``signal.pthread_kill`` checks for them at once). Blocking the signals during the fork (``pthread_sigmask``) is no
answer: it blocks them for the main thread only, and another thread takes a process-wide Ctrl-C for it.

The guard must be the outermost of the hooks: ``before`` hooks run in the reverse order of their registration, the
others in that order. Libraries imported later (datatrove's loguru) register theirs later, so code about to fork
calls :func:`guard_outermost` once they are imported.
"""

from __future__ import annotations

import _thread
import os
import signal
import sys
import threading
from types import FrameType

#: How many of the guard's ``before`` hooks have run in the fork the main thread is in (0: not forking).
_depth = 0
#: The signals held back, in order, each once.
_held_back: list[int] = []
#: len(sys.modules) when the guard was last registered: no module imported since, no hook registered since.
_modules_at_registration = -1


def deferred(signum: int, frame: FrameType | None) -> bool:
    """Whether ``signum``, arrived while ``frame`` ran, is held back because the main thread is forking (its
    handler then returns at once, and runs again after the fork)."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if _depth == 0 and not _in_guard(frame):
        return False
    if signum not in _held_back:
        _held_back.append(signum)
    if _depth == 0:  # in the guard's own code after the last hook's release: send it again from outside
        _send_held_back_later()
    return True


def guard_outermost() -> None:
    """Register the guard's hooks (again) where a module imported since may have registered hooks after them."""
    global _modules_at_registration
    if not hasattr(os, "register_at_fork") or len(sys.modules) == _modules_at_registration:
        return
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
    _modules_at_registration = len(sys.modules)


def _before_fork() -> None:
    global _depth
    if threading.current_thread() is threading.main_thread():
        _depth += 1


def _after_fork_in_parent() -> None:
    global _depth
    if _depth == 0:  # another thread forked
        return
    _depth -= 1
    if _depth == 0 and _held_back:  # the last of the hooks has run
        _send_held_back_later()


def _after_fork_in_child() -> None:
    """A child drops what was held back: that Ctrl-C reached the parent too, which stops its workers."""
    global _depth
    if _depth == 0:
        return
    _depth -= 1
    if _depth == 0:
        _held_back.clear()


def _send_held_back_later() -> None:
    _thread.start_new_thread(_send_held_back, (threading.main_thread().ident,))  # threading's start() runs Python


def _send_held_back(main_thread_id: int | None) -> None:
    """In a helper thread: the signals held back, sent to the main thread. Should the main thread still be in the
    guard's code, its handler holds them back again and starts another helper."""
    assert main_thread_id is not None  # the main thread has started
    while _held_back:
        signal.pthread_kill(main_thread_id, _held_back.pop(0))


def _in_guard(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code in _GUARD_CODES:
            return True
        frame = frame.f_back
    return False


#: The code of the guard run in the parent's main thread: a signal handled while one of them runs is held back.
_GUARD_CODES = frozenset({_before_fork.__code__, _after_fork_in_parent.__code__, _send_held_back_later.__code__})

guard_outermost()
