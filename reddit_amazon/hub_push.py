"""What pushing a folder to a Hub repo does alike for the dataset (`reddit-amazon push`, `build --push-to-hub`) and
the model (`lavic-ref push`): the token asked for before any request, the branch made before committing to it, a
lost connection said in one line."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

#: What a push without a token is told (after what needs it: "pushing", "--push-to-hub").
TOKEN_NEEDED = "needs a Hugging Face token with write access: set HF_TOKEN or run `hf auth login`"


_Command = TypeVar("_Command", bound=Callable[..., Any])


def push_options(command: _Command) -> _Command:
    """``--private`` and ``--revision``, as both push commands take them."""
    command = click.option("--revision", default=None, metavar="BRANCH",
                           help="Branch of the repo to commit to, made from the default branch if it is not there "
                                "yet [default: the default branch].")(command)
    return click.option("--private", is_flag=True,
                        help="Create the repo private (an existing repo keeps its visibility).")(command)


class PushRefused(ValueError):
    """A push refused before anything was sent (no token, a folder that is not as written): the message is the
    whole error line."""


def require_token(token: str | None) -> None:
    """Refuse a push with neither ``token`` nor a stored login: the Hub's 401 would name neither way to give one."""
    from huggingface_hub import get_token

    if not (token or get_token()):
        raise PushRefused(f"pushing {TOKEN_NEEDED}")


def make_branch(api: Any, repo_id: str, repo_type: str, revision: str | None) -> None:
    """The branch ``revision`` of the repo, made from the default branch where it is not there yet (kept where it
    is): the Hub answers 404 to listing or committing to a branch that does not exist. ``None`` is the default
    branch; a pull request's ref (``refs/pr/N``) is the Hub's to make (it refuses one made as a branch)."""
    if revision is not None and not revision.startswith("refs/pr/"):
        api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)


@contextmanager
def connection_errors_named(endpoint: str) -> Iterator[None]:
    """A connection to the Hub lost or never made (the HTTP client's own error, no OSError, unlike the Hub's
    answers) as a :class:`ConnectionError` saying so: the one commit either was made or not, so pushing again is
    safe."""
    from huggingface_hub.errors import HfHubHTTPError

    from reddit_amazon.cli_errors import one_line

    # httpx's HTTPError (httpx2's in newer huggingface_hub), the base of the Hub's errors and of the client's own
    client_error: type[BaseException] = next(base for base in HfHubHTTPError.__mro__[1:]
                                             if base.__name__ == "HTTPError")
    try:
        yield
    except OSError:
        raise
    except client_error as error:
        raise ConnectionError(f"the connection to {endpoint} failed ({type(error).__name__}: {one_line(error)}); "
                              "nothing or the whole commit was published: push again") from error
