"""replicator.observe: logging (structlog with secret redaction), progress, metrics.

Library code logs through :func:`replicator.observe.logging.get_logger` and
never prints; the CLI configures the pipeline once with
:func:`replicator.observe.logging.configure_logging`.
"""
