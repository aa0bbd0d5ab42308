"""The retry layer of the transport: send again what is worth sending again.

:class:`RetryLayer` sends each request down to the layer below and decides,
after each failure, whether to pause and send it again:

* **No answer** (connection refused or reset, time-out): retried with capped,
  jittered exponential backoff for as long as the request's retry deadline
  allows (:attr:`~.options.RegistryOptions.retry_deadline`, counted from its
  first failure), however many sends that takes, so that a registry that
  restarts, or a network that drops for a few seconds, costs a pause instead of
  the copy.  The exception: a host that has not answered a single request in
  this run and refuses the connection (or whose name does not resolve) is most
  likely the wrong address, and fails after a couple of quick tries.  TLS
  failures and answers that are not HTTP are never retried.
* **An answer worth another try** (408, 429, 502, 503, 504; 500 for GET and
  HEAD or where the request allows it): retried up to ``RetryPolicy.attempts``
  sends in all, within the same deadline.  ``Retry-After`` is honoured: it
  lengthens the pause, and one asking for more than
  ``RetryPolicy.max_retry_after`` or beyond the deadline ends the retries at
  once (the answer goes up as it is).

Guarantees:

* Only requests whose body can be sent again are retried (``RequestSpec.retry``:
  bytes, or a factory re-opening the stream).
* No retry starts after the deadline, and an attempt still running when the
  deadline passes is abandoned: a request fails at most ``retry_deadline``
  seconds after its first failure (plus the read time-out of that first one).
* The layer never raises anything but what the layer below raised; the last
  answer is handed up as it is, for the error mapping to explain.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import structlog

from replicator.targets.registry._aiohttp import aiohttp
from replicator.targets.registry.errors import (
    DeadlineExceeded,
    failure_kind,
    parse_retry_after,
)
from replicator.targets.registry.exchange import (
    HostState,
    Layer,
    NoAnswer,
    Outgoing,
    RequestSpec,
)
from replicator.targets.registry.options import RegistryOptions, RetryPolicy

log = structlog.get_logger("replicator.registry.retries")

#: Statuses worth sending a request again for (500 only where allowed).
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_IDEMPOTENT = frozenset({"GET", "HEAD"})
#: Sends allowed to a host that never answered and refuses the connection.
FIRST_CONTACT_ATTEMPTS = 3
#: A pause that would leave less than this before the deadline is not taken.
_MIN_ATTEMPT_WINDOW = 0.05


def backoff_delay(policy: RetryPolicy, failures: int, cap: float, jitter: float) -> float:
    """The pause after ``failures`` failures: exponential from ``base_delay``, capped, jittered."""
    step: float = policy.base_delay * 2.0 ** max(0, failures - 1)
    return min(cap, step) * jitter


def status_is_retryable(spec: RequestSpec, status: int) -> bool:
    """Whether an answer ``status`` to ``spec`` is worth sending the request again for."""
    if status in spec.ok:
        return False
    if status in RETRY_STATUSES:
        return True
    if status == 500:
        return spec.retry_500 if spec.retry_500 is not None else spec.method in _IDEMPOTENT
    return False


@dataclass(slots=True)
class RetryBudget:
    """The retry allowance of one request: a deadline that starts at its first failure."""

    deadline: float
    clock: Callable[[], float] = time.monotonic
    first_failure: float | None = None
    failures: int = 0

    def failed(self) -> None:
        """Record a failure (the first one starts the deadline)."""
        self.failures += 1
        if self.first_failure is None:
            self.first_failure = self.clock()

    def remaining(self) -> float | None:
        """Seconds left before the deadline; None before the first failure."""
        if self.first_failure is None:
            return None
        return self.first_failure + self.deadline - self.clock()

    def elapsed(self) -> float:
        """Seconds since the first failure (0 before it)."""
        return 0.0 if self.first_failure is None else self.clock() - self.first_failure

    def fits(self, delay: float) -> bool:
        """Whether a pause of ``delay`` still leaves time for another attempt."""
        remaining = self.remaining()
        return remaining is None or delay + _MIN_ATTEMPT_WINDOW < remaining


def _jitter() -> float:
    return random.uniform(0.5, 1.0)


class RetryLayer:
    """Retries what the layer below failed at, within the options' policy (see module doc)."""

    def __init__(
        self,
        inner: Layer,
        options: RegistryOptions,
        host: HostState,
        *,
        host_name: str,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = _jitter,
    ) -> None:
        self.inner = inner
        self.policy = options.retry
        self.deadline = options.retry_deadline
        self.host = host
        self.host_name = host_name
        self._clock = clock
        self._jitter = jitter

    async def send(self, request: Outgoing) -> aiohttp.ClientResponse:
        """Send ``request``, again after each retryable failure; the last answer."""
        budget = RetryBudget(self.deadline, self._clock)
        attempt = request.attempt
        while True:
            request.trace.attempts = attempt
            try:
                response = await self._attempt(request.again(attempt), budget)
            except NoAnswer as exc:
                delay = self._after_no_answer(request.spec, exc, attempt, budget)
                request.trace.elapsed = budget.elapsed()
                if delay is None:
                    raise
                reason = type(exc.cause).__name__
            else:
                delay = self._after_answer(request.spec, response, attempt, budget)
                request.trace.elapsed = budget.elapsed()
                if delay is None:
                    return response
                response.release()
                reason = f"HTTP {response.status}"
            self._log(request, attempt, delay, reason)
            await anyio.sleep(delay)
            attempt += 1

    async def _attempt(self, request: Outgoing, budget: RetryBudget) -> aiohttp.ClientResponse:
        """One send; after a failure, cut off when the deadline passes."""
        remaining = budget.remaining()
        if remaining is None:
            return await self.inner.send(request)
        with anyio.move_on_after(max(0.0, remaining)):
            return await self.inner.send(request)
        raise NoAnswer(DeadlineExceeded("the retry deadline passed while waiting for an answer"))

    def _after_no_answer(
        self, spec: RequestSpec, exc: NoAnswer, attempt: int, budget: RetryBudget
    ) -> float | None:
        """The pause before sending again after no answer; None: give up."""
        budget.failed()
        if not spec.retry:
            return None
        kind = failure_kind(exc.cause)
        if kind in ("tls", "not_http"):
            return None
        first_contact = kind in ("dns", "refused") and not self.host.answered
        if first_contact and attempt >= min(FIRST_CONTACT_ATTEMPTS, self.policy.attempts):
            return None
        cap = min(self.policy.max_delay, self.policy.max_reconnect_delay)
        delay = backoff_delay(self.policy, budget.failures, cap, self._jitter())
        return delay if budget.fits(delay) else None

    def _after_answer(
        self,
        spec: RequestSpec,
        response: aiohttp.ClientResponse,
        attempt: int,
        budget: RetryBudget,
    ) -> float | None:
        """The pause before sending again after ``response``; None: hand it up."""
        if not status_is_retryable(spec, response.status):
            return None
        budget.failed()
        if not spec.retry or attempt >= self.policy.attempts:
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None and retry_after > self.policy.max_retry_after:
            return None
        delay = backoff_delay(self.policy, budget.failures, self.policy.max_delay, self._jitter())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay if budget.fits(delay) else None

    def _log(self, request: Outgoing, attempt: int, delay: float, reason: str) -> None:
        log.info(
            "registry.request_retried",
            host=self.host_name,
            kind=request.spec.kind,
            method=request.spec.method,
            reason=reason,
            attempt=attempt,
            delay=round(delay, 3),
        )
