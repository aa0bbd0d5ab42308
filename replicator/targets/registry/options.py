"""Connection settings for one registry host: credentials, TLS, time-outs, retries, rate limits.

Pure data (no aiohttp import), so the CLI can build options cheaply.  The
defaults bound how long an unresponsive or restarting registry can hold a
request: a connection attempt gives up after :attr:`RegistryOptions.connect_timeout`,
an open connection that sends nothing for :attr:`RegistryOptions.read_timeout`
counts as broken, and one request spends at most
:attr:`RegistryOptions.retry_deadline` on retries after its first failure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Credentials:
    """What to authenticate with.  Never logged; ``repr`` hides the secrets."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: A refresh token (Docker ``identitytoken``), used for OAuth2 grants.
    identity_token: str | None = field(default=None, repr=False)
    #: A ready bearer token (e.g. ``REPLICATOR_REGISTRY_TOKEN``), used as is.
    registry_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """Every secret value held, for the log redaction processor."""
        return [s for s in (self.password, self.identity_token, self.registry_token) if s]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed request is sent again.

    An answer worth another try (408, 429, 502, 503, 504; 500 where the request
    allows it) is retried until ``attempts`` sends in all.  A request that got no
    answer at all (connection refused or reset, time-out) is retried for as long
    as :attr:`RegistryOptions.retry_deadline` allows, however many sends that
    takes.  The pause before each retry grows exponentially from ``base_delay``,
    is jittered (a random 50-100 % of the step) and capped at ``max_delay``
    (``max_reconnect_delay`` after a connection failure, so that a registry
    back from a restart is found again quickly); a longer ``Retry-After`` wins.
    """

    attempts: int = 6
    base_delay: float = 0.25
    max_delay: float = 30.0
    #: Retry-After values above this are treated as a failure rather than a sleep.
    max_retry_after: float = 600.0
    #: Longest pause between attempts to reach a host that did not answer.
    max_reconnect_delay: float = 2.0


@dataclass(frozen=True, slots=True)
class RateLimits:
    """How fast this process may talk to one host (all off by default).

    ``requests_per_second`` paces every request sent to the host (each retry
    and redirect hop included), evenly, in bursts of one; ``bandwidth`` caps
    the body bytes per second sent to and received from it, uploads and
    downloads together; with ``min_remaining`` the host's quota headers
    (``RateLimit-Remaining``, Docker Hub's ``ratelimit-remaining: N;w=S``)
    are read on every answer, and while fewer than ``min_remaining`` requests
    remain no request is sent: the host is left alone until the quota resets
    (``RateLimit-Reset``), or for ``default_pause`` seconds when it does not
    say when, never longer than ``max_pause``; then one request goes first and
    its answer decides whether the others follow or the pause goes on.  See
    :mod:`.ratelimit`.  These sit under the engine's adaptive (AIMD)
    concurrency limits, which still decide how many requests run at once.
    """

    requests_per_second: float | None = None
    #: Bytes per second, request and response bodies of the host together.
    bandwidth: int | None = None
    min_remaining: int | None = None
    #: Seconds paused when the quota is low and the host gives no reset time.
    default_pause: float = 60.0
    #: The longest single pause, whatever the host says (Docker Hub's window: 6 h).
    max_pause: float = 6 * 3600.0

    @property
    def active(self) -> bool:
        """True when any limit is set (otherwise the transport has no rate layer)."""
        return (
            self.requests_per_second is not None
            or self.bandwidth is not None
            or bool(self.min_remaining)
        )


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """How to talk to one registry host."""

    credentials: Credentials | None = None
    #: None = decide by host: loopback hosts use plain HTTP (as Docker does).
    plain_http: bool | None = None
    #: Skip TLS certificate verification.
    insecure: bool = False
    ca_file: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    #: Connections kept per host.
    max_connections: int = 32
    #: Seconds a connection attempt (TCP and TLS handshake) may take.
    connect_timeout: float = 10.0
    #: Seconds the answer to a request may keep us waiting for its next bytes
    #: (its first ones included); longer, and the connection counts as broken.
    read_timeout: float = 30.0
    #: Seconds one request may spend on retries after its first failure before
    #: its error is raised (an attempt still running then is abandoned).
    retry_deadline: float = 60.0
    #: Blobs up to this size go monolithic (POST + PUT); larger ones chunked.
    #: (The engine assumes this value: blobs above it always go chunked.)
    monolithic_max: int = 32 * 1024 * 1024
    #: PATCH size of a chunked upload.  Memory does not depend on it (bodies
    #: stream); each PATCH costs the registry ~10 ms of CPU (distribution 2.8:
    #: 16 MiB chunks cost it 0.4 CPU-s more per GiB than 32 MiB ones, 64 MiB
    #: saved little more), and a killed run sends at most one chunk per
    #: in-flight blob again.  Same as ``monolithic_max``: a kill loses at most
    #: 32 MiB per blob whichever way it went.
    chunk_size: int = 32 * 1024 * 1024
    #: Pages of tag lists / referrers followed at most.
    max_pages: int = 1000
    #: Request rate, bandwidth and quota limits of the host (none by default).
    rate_limits: RateLimits = field(default_factory=RateLimits)


def is_loopback_host(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and [::1] (with or without a port)."""
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name[1:]
    elif name.count(":") == 1:
        name = name.split(":", 1)[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def uses_plain_http(host: str, options: RegistryOptions) -> bool:
    """Whether to speak http:// to ``host`` under ``options``."""
    if options.plain_http is not None:
        return options.plain_http
    return is_loopback_host(host)
