"""The one place that owns retry policies (tenacity).

Only `RetryableProviderError` (429, 5xx, dropped connections, timeouts) is retried, with
exponential backoff, jitter and an overall deadline. Credentials errors and "offer gone"
are never retried here, and a whole launch is never retried (it costs money).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from .errors import RetryableProviderError

if TYPE_CHECKING:
    from tenacity import Retrying

__all__ = ["RetryPolicy", "call_with_retries"]

T = TypeVar("T")


class RetryPolicy:
    """Bounded retries: at most `attempts` tries and `deadline_s` seconds in all."""

    def __init__(
        self, attempts: int = 4, deadline_s: float = 10.0, base_s: float = 0.2, cap_s: float = 2.0
    ):
        self.attempts = attempts
        self.deadline_s = deadline_s
        self.base_s = base_s
        self.cap_s = cap_s

    def retrying(self) -> Retrying:
        from tenacity import (  # imported on first use: the CLI must start fast
            Retrying,
            retry_if_exception_type,
            stop_after_attempt,
            stop_after_delay,
            wait_random_exponential,
        )

        return Retrying(
            retry=retry_if_exception_type(RetryableProviderError),
            stop=stop_after_attempt(self.attempts) | stop_after_delay(self.deadline_s),
            wait=wait_random_exponential(multiplier=self.base_s, max=self.cap_s),
            reraise=True,
        )


DEFAULT_POLICY = RetryPolicy()


def call_with_retries(fn: Callable[[], T], policy: RetryPolicy = DEFAULT_POLICY) -> T:
    """Call `fn`, retrying only retryable provider errors under `policy`."""
    for attempt in policy.retrying():
        with attempt:
            return fn()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover
