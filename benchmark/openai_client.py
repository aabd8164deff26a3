"""The ``openai`` client as the harness uses it: key from the environment, tenacity retries with backoff."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class MissingAPIKeyError(RuntimeError):
    """``OPENAI_API_KEY`` is not set (a usage error, reported without a traceback)."""


def make_client(base_url: str | None, timeout: float):
    from openai import OpenAI

    if not os.environ.get("OPENAI_API_KEY"):
        raise MissingAPIKeyError("OPENAI_API_KEY is not set (for a local OpenAI-compatible server any value works)")
    # Retries are done by with_retries(), with backoff, so the client does not retry on its own.
    return OpenAI(base_url=base_url, max_retries=0, timeout=timeout)


def is_transient(error: BaseException) -> bool:
    """Connection problems, timeouts, rate limits and server errors are retried; bad requests are not."""
    import openai

    if isinstance(error, openai.APIConnectionError):  # includes timeouts
        return True
    if isinstance(error, openai.APIStatusError):
        return error.status_code in (408, 409, 429) or error.status_code >= 500
    return False


def with_retries(call: Callable[[], T], max_attempts: int, max_wait: float = 30.0) -> T:
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

    wrapped: Any = retry(retry=retry_if_exception(is_transient), stop=stop_after_attempt(max_attempts),
                         wait=wait_exponential(multiplier=0.5, max=max_wait), reraise=True)(call)
    return wrapped()
