"""Run the image ``scripts/image.sh`` built, with buildah, as a container would.

The image lives in buildah's store at ``$REPLICATOR_IMAGE_STORE`` (vfs driver,
the script's default ``/var/lib/replicator-image``) under ``$REPLICATOR_IMAGE``
(default ``localhost/replicator:latest``).  A :class:`Container` is one buildah
working container: a fresh copy of the image's filesystem.  Its commands run
with ``buildah run --isolation chroot --network host``: as the image's user
(``USER``, no ``--user`` given), with its environment and working directory,
on the host's network (so it reaches registries on 127.0.0.1), with host
directories bind-mounted as volumes.  ``buildah run`` does not apply the
image's ``ENTRYPOINT``; :meth:`Container.entrypoint` runs it by prefixing the
command with the ``ENTRYPOINT`` read from the image's configuration, as a
container runtime does.

Chroot isolation gives the command its own mount and UTS namespaces but not a
PID namespace: its processes are host processes.  Every command is started in
a new session, so :meth:`Container.kill` SIGKILLs the whole process group
(buildah, its chroot helpers and the command) at once, as a container runtime
kills a container.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

IMAGE = os.environ.get("REPLICATOR_IMAGE", "localhost/replicator:latest")
STORE = Path(os.environ.get("REPLICATOR_IMAGE_STORE", "/var/lib/replicator-image"))

#: The fixed user and group of the image.
UID = 10001
GID = 10001
#: Where the image expects its docker config and its state (docs/CONTAINER.md).
CONFIG_DIR = "/config/docker"
STATE_DIR = "/var/lib/replicator"


class BuildahError(RuntimeError):
    """A buildah command failed; the message holds its stderr."""


@dataclass(frozen=True)
class Volume:
    """A host directory bind-mounted into the container."""

    host: Path
    container: str
    read_only: bool = False

    def option(self) -> str:
        """The ``buildah run -v`` value."""
        return f"{self.host}:{self.container}:{'ro' if self.read_only else 'rw'}"


class Buildah:
    """buildah over the image store (rootful, vfs), as scripts/image.sh uses it."""

    def __init__(self, store: Path = STORE) -> None:
        self.store = store

    def argv(self, *args: str) -> list[str]:
        """``buildah`` with the store's global options, then ``args``."""
        return [
            "buildah",
            "--root",
            str(self.store / "storage"),
            "--runroot",
            str(self.store / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def check(self, *args: str, timeout: float = 300) -> str:
        """Run a buildah command; its stdout, or :class:`BuildahError`."""
        try:
            proc = subprocess.run(
                self.argv(*args), capture_output=True, text=True, timeout=timeout, check=False
            )
        except FileNotFoundError as exc:
            raise BuildahError(f"buildah is not installed ({exc})") from None
        if proc.returncode != 0:
            raise BuildahError(f"buildah {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def image_info(self, image: str = IMAGE) -> dict[str, Any]:
        """``buildah inspect`` of the image (its OCI and Docker configurations)."""
        info: dict[str, Any] = json.loads(self.check("inspect", "--type", "image", image))
        return info


class Container:
    """One working container made from the image; :meth:`remove` when done."""

    def __init__(self, buildah: Buildah, image: str = IMAGE) -> None:
        self.buildah = buildah
        self.name = f"replicator-test-{secrets.token_hex(4)}"
        buildah.check("from", "--pull=never", "--name", self.name, image)
        config = buildah.image_info(image)["OCIv1"]["config"]
        self.entrypoint_argv: list[str] = list(config.get("Entrypoint") or [])

    def argv(
        self,
        command: Sequence[str],
        volumes: Sequence[Volume] = (),
        env: Mapping[str, str] | None = None,
    ) -> list[str]:
        """The ``buildah run`` command line for ``command`` (used as given).

        ``env``: variables added to the image's environment (as a pod's ``env``).
        """
        mounts = [arg for v in volumes for arg in ("-v", v.option())]
        envs = [arg for k, v in (env or {}).items() for arg in ("--env", f"{k}={v}")]
        return self.buildah.argv(
            "run",
            "--isolation",
            "chroot",
            "--network",
            "host",
            *mounts,
            *envs,
            self.name,
            "--",
            *command,
        )

    def run(
        self,
        *command: str,
        volumes: Sequence[Volume] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the container to completion (stdout, stderr captured)."""
        return subprocess.run(
            self.argv(command, volumes, env),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def entrypoint(
        self,
        *args: str,
        volumes: Sequence[Volume] = (),
        env: Mapping[str, str] | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run the image's ``ENTRYPOINT`` with ``args``, as ``docker run IMAGE ARGS`` does."""
        return self.run(*self.entrypoint_argv, *args, volumes=volumes, env=env, timeout=timeout)

    def start_entrypoint(
        self, *args: str, volumes: Sequence[Volume] = (), env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start the ``ENTRYPOINT`` with ``args`` in the background, in its own session."""
        return subprocess.Popen(
            self.argv([*self.entrypoint_argv, *args], volumes, env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    @staticmethod
    def kill(proc: subprocess.Popen[str]) -> tuple[str, str]:
        """SIGKILL every process of a started command at once; its (stdout, stderr)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
        # Nothing of the container may outlive the kill (it would keep copying).
        deadline = time.monotonic() + 30
        while True:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return out, err
            if time.monotonic() > deadline:
                raise AssertionError(f"processes of group {proc.pid} survived SIGKILL")
            time.sleep(0.05)

    def changed_since(self, since: float, volumes: Sequence[Volume] = ()) -> list[str]:
        """Paths of the container's own filesystem created or changed after ``since``.

        Volumes are not part of it.  ``/run`` is left out: ``buildah run`` itself
        touches it (a container runtime mounts a tmpfs there).  So are the mount
        points of ``volumes`` and the directories above them: the runtime makes
        a mount point the image lacks (``/config/sync``), as Kubernetes' does
        before it makes the root file system read-only.
        """
        mount_points = {
            str(path)
            for v in volumes
            for path in (PurePosixPath(v.container), *PurePosixPath(v.container).parents)
        }
        root = Path(self.buildah.check("mount", self.name).strip())
        try:
            changed = []
            for top, dirs, files in os.walk(root):
                for name in (*dirs, *files):
                    path = Path(top) / name
                    st = path.lstat()
                    if max(st.st_mtime, st.st_ctime) > since:
                        changed.append("/" + str(path.relative_to(root)))
            return sorted(
                p
                for p in changed
                if p != "/run" and not p.startswith("/run/") and p not in mount_points
            )
        finally:
            self.buildah.check("umount", self.name)

    def remove(self) -> None:
        """Remove the working container (its filesystem copy)."""
        self.buildah.check("rm", self.name)
