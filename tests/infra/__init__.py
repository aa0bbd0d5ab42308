"""Real test infrastructure: registries, a token server, a referrers shim, a fault proxy.

Nothing here is mocked: every server is a real process (or, for the fault proxy,
a real HTTP server on its own thread) on a free 127.0.0.1 port.

Fixtures (``tests/conftest.py``)
--------------------------------

``registry_open``, ``registry_basic``, ``registry_token``, ``registry_tls``,
``registry_referrers``
    Session-scoped, started on first use; each a
    :class:`tests.infra.registry.RegistryInstance` with ``.host``, ``.url``,
    ``.username``/``.password`` (default user), ``.users`` (name → password),
    ``.ca_file`` (TLS), ``.options(user=None, **overrides)`` →
    ``RegistryOptions``, ``.credentials(user)``, ``.basic_auth_header(user)``,
    ``.ssl_context()``, and for the token variant ``.token(scopes, user)`` and
    ``.token_log()`` (what the token server was asked and granted).
``registry_variant``
    The five variants in turn (test ids ``open``, ``basic``, ``token``, ``tls``,
    ``referrers``).
``registry_factory``
    ``registry_factory("open") -> RunningRegistry``: a private registry for one
    test, with ``.instance``, ``.stop()``, ``.start()``, ``.restart()``, ``.kill()``.
``fault_proxy``
    ``fault_proxy(instance) -> FaultProxy``: a proxy in front of any instance,
    usable wherever an instance is (``.host``, ``.url``, ``.options()``,
    ``.instance``); rules ``status``, ``cut``, ``cut_request``, ``flip``,
    ``delay``; counters ``stats()`` / ``reset()``.
``unique_repo``
    A fresh repository name (``t/<test>-<random>``); call it for more:
    ``unique_repo()``, ``unique_repo("lim")`` → ``lim/<test>-<random>``.

Users of the token variant (see :data:`tests.infra.registry.TOKEN_USERS`):
``admin`` (everything, catalog included), ``reader`` (pull everywhere),
``limited`` (pull/push/delete under ``lim/``, pull under ``shared/``);
anonymous requests may pull under ``public/``.  The basic variant has
``alice`` and ``bob``.  Passwords are random per session.

Every server logs to a file in its temporary directory
(``RegistryInstance.log_file``); a server that fails to start raises an error
quoting the tail of its log.  ``$REPLICATOR_TEST_REGISTRY`` names another
docker-registry binary; a missing one fails the integration tests, never skips.
"""
