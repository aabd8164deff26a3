"""Chat-completion parameters as an OpenAI-compatible endpoint accepts them, learnt from its refusals.

OpenAI's reasoning models (o-series, gpt-5) refuse ``max_tokens`` (they take
``max_completion_tokens``) and any ``temperature`` but their default, answering 400 with the
parameter named in the error. Without this, such a refusal would be taken as an answer about one
record and repeated for every record (the relevance filter would reject every conversation, the
benchmark would score every answer invalid). Used by :mod:`reddit_amazon.relevance` and the
``openai-chat`` recommender.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class ChatParameters:
    """Rewrites requests as the endpoint asked in an earlier refusal; shared by threads."""

    def __init__(self, model: str):
        self.model = model
        self._rename_max_tokens = False
        self._drop_temperature = False
        self._lock = threading.Lock()

    def apply(self, request: dict[str, Any]) -> dict[str, Any]:
        """``request`` as this endpoint accepts it (a new dict)."""
        sent = dict(request)
        if self._rename_max_tokens and "max_tokens" in sent:
            sent["max_completion_tokens"] = sent.pop("max_tokens")
        if self._drop_temperature:
            sent.pop("temperature", None)
        return sent

    def learn(self, error: Any, sent: dict[str, Any]) -> bool:
        """Take note of what a 400 refusal of ``sent`` asks for; False when it is not about a parameter we set."""
        param, code = getattr(error, "param", None), getattr(error, "code", None)
        with self._lock:
            if param == "max_tokens" and code == "unsupported_parameter" and "max_tokens" in sent:
                if not self._rename_max_tokens:
                    log.warning("%s refuses max_tokens: sending max_completion_tokens instead", self.model)
                self._rename_max_tokens = True
                return True
            if param == "temperature" and code == "unsupported_value" and "temperature" in sent:
                if not self._drop_temperature:
                    log.warning("%s accepts only its default temperature: answers are sampled, not greedy", self.model)
                self._drop_temperature = True
                return True
        return False

    @property
    def adaptations(self) -> list[str]:
        """What was changed, for reports and manifests (empty when the endpoint took the requests as configured)."""
        return [name for name, on in (("max_tokens -> max_completion_tokens", self._rename_max_tokens),
                                      ("temperature dropped (model default)", self._drop_temperature)) if on]
