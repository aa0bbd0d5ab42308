"""Randomized fault schedules: what one seed draws (pure, no I/O).

A :class:`Schedule` is everything one randomized run does, drawn from one
integer seed by :func:`draw`: the graph put at the source, the command run,
where it copies to and how it authenticates, and one to four faults, each
with its timing (the n-th matching request, a byte offset).  The same seed
always draws the same schedule, so a failing seed is reproduced with::

    REPLICATOR_FAULT_SEED=1234 bash scripts/test-slow.sh -k fault_schedule

(:mod:`tests.faults.runner` carries a schedule out and checks its outcome.)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

#: What a graph at the source can be (see :mod:`tests.faults.world`).
GRAPH_KINDS: tuple[str, ...] = (
    "signed",  # image + signature + SBOM + the SBOM's signature (referrers two deep)
    "deep",  # image with a chain of referrers four deep, plus siblings
    "multiarch",  # OCI index: two platforms + attestation manifests, signed
    "docker_list",  # Docker manifest list of Docker schema-2 images (odd whitespace)
    "large",  # image with large layers (chunked with --chunk-size), signed
    "unknown_types",  # artifacts of unknown media types (config, layers, artifactType)
    "artifact_index",  # an index with artifactType and subject as a referrer
)
COMMANDS: tuple[str, ...] = ("copy-r", "copy-all-tags", "sync")
SOURCES: tuple[str, ...] = ("open", "basic", "token", "referrers")
DESTINATIONS: tuple[str, ...] = ("open", "basic", "token", "ocidir")
CHUNK_SIZES: tuple[str | None, ...] = (None, "512KiB", "1MiB")

#: Requests a fault can aim at, per side: (name, method or None, path regex).
SOURCE_REQUESTS: tuple[tuple[str, str | None, str], ...] = (
    ("manifest-get", "GET", r"/manifests/"),
    ("manifest-head", "HEAD", r"/manifests/"),
    ("blob-get", "GET", r"/blobs/sha256:"),
    ("listing", "GET", r"/(referrers/|tags/list|manifests/sha256-)"),
    ("token", None, r"^/token"),
    ("any", None, r"^/"),
)
DESTINATION_REQUESTS: tuple[tuple[str, str | None, str], ...] = (
    ("upload-start", "POST", r"/blobs/uploads/(\?|$)"),
    ("upload-chunk", "PATCH", r"/blobs/uploads/."),
    ("upload-close", "PUT", r"/blobs/uploads/."),
    ("manifest-put", "PUT", r"/manifests/"),
    ("blob-head", "HEAD", r"/blobs/sha256:"),
    ("manifest-head", "HEAD", r"/manifests/"),
    ("manifest-get", "GET", r"/manifests/"),
    ("token", None, r"^/token"),
    ("any", None, r"^/"),
)

#: Fault kinds and the request names (either side) each may hit.
_RESPONSE_BODIES = ("manifest-get", "blob-get", "listing", "token")
_UPLOAD_BODIES = ("upload-chunk", "upload-close", "manifest-put")
FAULT_TARGETS: dict[str, tuple[str, ...]] = {
    "status": tuple(n for n, _, _ in SOURCE_REQUESTS + DESTINATION_REQUESTS),
    "cut": _RESPONSE_BODIES,
    "cut_request": _UPLOAD_BODIES,
    "stall": ("manifest-get", "blob-get", "upload-chunk", "manifest-put", "blob-head", "any"),
    "stall_mid": ("manifest-get", "blob-get"),
    "truncate": ("manifest-get", "blob-get", "listing"),
    "flip": ("manifest-get", "blob-get", "listing"),
    "flip_request": _UPLOAD_BODIES,
    "wrong_length": ("manifest-get", "manifest-head", "blob-get", "blob-head"),
    "wrong_digest": ("manifest-get", "manifest-head", "manifest-put", "blob-get"),
    "redirect": ("blob-get",),
    "throttle": ("blob-get", "upload-chunk", "upload-close"),
    "restart": ("manifest-get", "blob-get", "upload-chunk", "upload-close", "manifest-put", "any"),
}
#: How often a (side, request) is drawn as a fault's target (default 3): requests
#: a copy into a new repository rarely sends (it asks a new repository nothing,
#: and reads no fallback index it writes) are drawn less often.
_TARGET_WEIGHTS: dict[tuple[str, str], int] = {
    ("dst", "manifest-get"): 1,
    ("dst", "manifest-head"): 1,
    ("dst", "blob-head"): 1,
    ("src", "manifest-head"): 2,
}
#: How often each kind is drawn (weights).
FAULT_WEIGHTS: dict[str, int] = {
    "status": 6,
    "cut": 4,
    "cut_request": 3,
    "stall": 2,
    "stall_mid": 2,
    "truncate": 2,
    "flip": 3,
    "flip_request": 2,
    "wrong_length": 2,
    "wrong_digest": 2,
    "redirect": 2,
    "throttle": 1,
    "restart": 3,
}
#: Byte offsets drawn for body faults: manifests and listings are small, blobs not.
_SMALL_OFFSETS = (0, 1, 40, 150, 400)
_BLOB_OFFSETS = (0, 1, 200, 4096, 65_536, 300_000, 700_000, 1_500_000)

#: Read time-out and retry deadline given to every faulted run (seconds): a
#: stall longer than the first is a time-out; no fault outlasts the second.
READ_TIMEOUT = 4
RETRY_DEADLINE = 15


@dataclass(frozen=True)
class FaultSpec:
    """One fault: which side and requests, when (n-th match, how often), and how."""

    kind: str
    side: str  # "src" or "dst"
    target: str  # a request name of SOURCE_REQUESTS / DESTINATION_REQUESTS
    nth: int
    times: int | None  # None: every match from the n-th on
    code: int = 0  # status
    retry_after: str | None = None  # status
    forward: bool = False  # status: the registry acts, the client sees the error
    offset: int = 0  # cut, cut_request, stall_mid, truncate, flip, flip_request: bytes
    seconds: float = 0.0  # stall, stall_mid, restart (downtime)
    delta: int = 0  # wrong_length; throttle: bytes per second
    down: str = "502"  # restart: how the proxy shows the registry while it is down
    lag: float = 0.0  # restart: seconds between the matching request and the stop

    @property
    def method(self) -> str | None:
        """The HTTP method the fault matches (None: any)."""
        return _request(self.side, self.target)[0]

    @property
    def path(self) -> str:
        """The path regex the fault matches."""
        return _request(self.side, self.target)[1]

    def describe(self) -> str:
        """One line: ``status 503 x2 on dst upload-chunk from #3 (Retry-After 1)``."""
        times = "every" if self.times is None else f"x{self.times}"
        what = {
            "status": f"status {self.code}"
            + (" after forwarding" if self.forward else "")
            + (f" Retry-After {self.retry_after}" if self.retry_after is not None else ""),
            "cut": f"cut after {self.offset} B",
            "cut_request": f"request cut after {self.offset} B"
            + (" (registry got them)" if self.forward else ""),
            "stall": f"stall {self.seconds:g}s",
            "stall_mid": f"stall {self.seconds:g}s after {self.offset} B",
            "truncate": f"truncated to {self.offset} B",
            "flip": f"byte {self.offset} flipped",
            "flip_request": f"request byte {self.offset} flipped",
            "wrong_length": f"Content-Length {self.delta:+d}",
            "wrong_digest": "wrong Docker-Content-Digest",
            "redirect": "307 to another host",
            "throttle": f"slow link {self.delta // 1024} KiB/s",
            "restart": f"registry restart{f' {self.lag:g}s later' if self.lag else ''}, "
            f"{self.seconds:g}s down ({self.down})",
        }[self.kind]
        return f"{what} {times} on {self.side} {self.target} from #{self.nth}"


@dataclass(frozen=True)
class Schedule:
    """Everything one randomized run does (see the module doc)."""

    seed: int
    graphs: tuple[str, ...]  # one graph kind per tag (v1, v2, ...)
    command: str
    source: str
    destination: str
    chunk_size: str | None
    sync_env_credentials: bool  # sync: credentials from password-env (else the Docker config)
    faults: tuple[FaultSpec, ...] = field(default_factory=tuple)

    @property
    def tags(self) -> tuple[str, ...]:
        """The source tags the schedule creates (``v1``, ``v2``...)."""
        return tuple(f"v{i + 1}" for i in range(len(self.graphs)))

    @property
    def copied_tags(self) -> tuple[str, ...]:
        """The tags the command copies (``copy -r``: the first one only)."""
        return self.tags[:1] if self.command == "copy-r" else self.tags

    def describe(self) -> str:
        """A few lines saying what the schedule does (printed with every outcome)."""
        lines = [
            f"seed {self.seed}: {self.command} {self.source} -> {self.destination}"
            + (f" --chunk-size {self.chunk_size}" if self.chunk_size else "")
            + (" (sync credentials from password-env)" if self.sync_env_credentials else ""),
            "  graph: "
            + ", ".join(f"{t}={g}" for t, g in zip(self.tags, self.graphs, strict=True)),
        ]
        lines += [f"  fault: {f.describe()}" for f in self.faults]
        return "\n".join(lines)


def _request(side: str, name: str) -> tuple[str | None, str]:
    table = SOURCE_REQUESTS if side == "src" else DESTINATION_REQUESTS
    for n, method, path in table:
        if n == name:
            return method, path
    raise KeyError(f"no {side} request named {name!r}")


def _sides_for(target: str, destination: str, source: str) -> list[str]:
    sides = []
    if any(n == target for n, _, _ in SOURCE_REQUESTS):
        sides.append("src")
    if destination != "ocidir" and any(n == target for n, _, _ in DESTINATION_REQUESTS):
        sides.append("dst")
    if target == "token":
        sides = [s for s in sides if (source if s == "src" else destination) == "token"]
    return sides


def _draw_fault(rng: random.Random, source: str, destination: str) -> FaultSpec:
    kinds = list(FAULT_WEIGHTS)
    while True:
        kind = rng.choices(kinds, weights=[FAULT_WEIGHTS[k] for k in kinds])[0]
        options = [
            (side, target)
            for target in FAULT_TARGETS[kind]
            for side in _sides_for(target, destination, source)
        ]
        if kind == "restart":  # the shim forgets its referrers when restarted
            options = [(s, t) for s, t in options if not (s == "src" and source == "referrers")]
        if options:
            break
    side, target = rng.choices(options, weights=[_TARGET_WEIGHTS.get(o, 3) for o in options])[0]
    nth = rng.choice((1, 1, 1, 2, 2, 3, 4, 6))
    times: int | None = rng.choices((1, 2, 3, None), weights=(6, 2, 1, 2))[0]
    spec = FaultSpec(kind, side, target, nth, times)
    return _with_parameters(rng, spec)


def _with_parameters(rng: random.Random, spec: FaultSpec) -> FaultSpec:
    from dataclasses import replace

    kind = spec.kind
    if kind == "status":
        method = spec.method
        writes = method in ("PUT", "PATCH", "POST")
        return replace(
            spec,
            code=rng.choice((429, 500, 502, 503, 503)),
            retry_after=rng.choice((None, None, "0", "1")),
            forward=writes and rng.random() < 0.3,
        )
    offsets = _BLOB_OFFSETS if spec.target.startswith(("blob", "upload")) else _SMALL_OFFSETS
    if kind in ("cut", "cut_request", "truncate", "flip", "flip_request"):
        return replace(spec, offset=rng.choice(offsets))
    if kind == "stall":
        return replace(spec, seconds=rng.choice((0.5, 1.5, 3.0, 6.0)), times=spec.times or 1)
    if kind == "stall_mid":
        return replace(
            spec,
            seconds=rng.choice((0.5, 2.0, 6.0)),
            offset=rng.choice(offsets[:6]),
            times=spec.times or 1,
        )
    if kind == "wrong_length":
        return replace(spec, delta=rng.choice((-100, -1, 1, 4096)))
    if kind == "throttle":
        return replace(spec, delta=rng.choice((256, 1024, 4096)) * 1024, times=None)
    if kind == "restart":
        return replace(
            spec,
            seconds=rng.choice((0.0, 1.0, 3.0)),
            down=rng.choice(("502", "drop")),
            times=1,
        )
    return spec


def _extras(seed: int, index: int, spec: FaultSpec) -> FaultSpec:
    """Parameters added after the first suite ran, drawn apart so earlier draws stay put."""
    from dataclasses import replace

    rng = random.Random(f"{seed}:{index}")
    if spec.kind == "cut_request":
        return replace(spec, forward=rng.random() < 0.5)
    if spec.kind == "restart":
        return replace(spec, lag=rng.choice((0.0, 0.3, 1.0)))
    return spec


def draw(seed: int) -> Schedule:
    """The schedule of ``seed`` (deterministic)."""
    rng = random.Random(seed)
    command = rng.choices(COMMANDS, weights=(5, 3, 3))[0]
    source = rng.choices(SOURCES, weights=(4, 2, 3, 2))[0]
    destination = rng.choices(DESTINATIONS, weights=(3, 2, 3, 3))[0]
    count = 1 if command == "copy-r" else rng.choice((2, 3))
    graphs = tuple(rng.choice(GRAPH_KINDS) for _ in range(count))
    chunk = rng.choice(CHUNK_SIZES)
    faults = tuple(_draw_fault(rng, source, destination) for _ in range(rng.randint(1, 4)))
    faults = tuple(_extras(seed, i, f) for i, f in enumerate(faults))
    return Schedule(
        seed=seed,
        graphs=graphs,
        command=command,
        source=source,
        destination=destination,
        chunk_size=chunk,
        sync_env_credentials=command == "sync" and rng.random() < 0.5,
        faults=faults,
    )
