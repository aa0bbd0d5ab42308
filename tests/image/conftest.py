"""Fixtures of the image tests: the built image, and fresh containers of it.

The image is built by ``bash scripts/test-image.sh`` (which runs
``scripts/image.sh`` first).  When it is missing, every test fails saying so:
nothing is skipped silently.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.image.container import IMAGE, STORE, Buildah, BuildahError, Container


@pytest.fixture(scope="session")
def buildah() -> Buildah:
    """buildah over the image store; fails when the image is not built."""
    tool = Buildah()
    try:
        tool.image_info(IMAGE)
    except BuildahError as exc:
        pytest.fail(
            f"no image {IMAGE} in {STORE}: build it with `bash scripts/test-image.sh` "
            f"(or scripts/image.sh) ({exc})",
            pytrace=False,
        )
    return tool


@pytest.fixture(scope="session")
def image_info(buildah: Buildah) -> dict[str, Any]:
    """``buildah inspect`` of the image."""
    return buildah.image_info(IMAGE)


@pytest.fixture
def container(buildah: Buildah) -> Iterator[Callable[[], Container]]:
    """Factory of fresh containers of the image; all are removed when the test ends."""
    made: list[Container] = []

    def make() -> Container:
        made.append(Container(buildah, IMAGE))
        return made[-1]

    try:
        yield make
    finally:
        for c in made:
            c.remove()
