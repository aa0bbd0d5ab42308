"""replicator.cli: the ``replicator`` command.

:func:`console_main` is the console script.  It turns Python's cyclic garbage
collector off before the command's modules are imported: start-up creates
tens of thousands of objects (modules, classes, functions) that live as long
as the process, and the collector would walk them again and again as they age
(about 60 ms of a cold ``copy`` here, one full collection included).  Once
start-up is over, :func:`replicator.cli.heap.settle` moves everything
alive into the permanent generation and turns the collector back on, for the
objects of the actual work.
"""

from __future__ import annotations

import gc


def console_main() -> int:
    """The ``replicator`` console script (see the module doc)."""
    gc.disable()
    from replicator.cli import heap, main

    heap.defer_settling()
    return main.console_main()
