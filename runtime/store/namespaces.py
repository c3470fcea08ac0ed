"""Redis namespaces: ``settings.redis_namespace`` is the one prefix of a gateway's keys.

``AIGW_EXECUTIONS_NAMESPACE`` once moved the pipeline executions alone under another
prefix (it predates ``redis_namespace``); it is no longer read. Where it is still set
and would have moved them, ``aigw serve`` refuses to start rather than leave the
executions of a previous run where nothing reads them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

log = logging.getLogger("aigw")

RETIRED_ENV = "AIGW_EXECUTIONS_NAMESPACE"


def retired_variable_refusal(store: str, namespace: str,
                             environ: Mapping[str, str]) -> str | None:
    """Why the gateway must not start with ``environ``'s ``AIGW_EXECUTIONS_NAMESPACE``,
    or None (a warning logged where it is set but would change nothing: the same
    namespace, or the embedded store, which has none).

    >>> retired_variable_refusal("redis://r:6379/0", "aigw", {RETIRED_ENV: "old"})[:42]
    "AIGW_EXECUTIONS_NAMESPACE='old' is no long"
    """
    value = environ.get(RETIRED_ENV)
    if value is None:
        return None
    if value == namespace or store.startswith("embedded"):
        log.warning("%s is set but no longer read (every key, executions too, is under "
                    "settings.redis_namespace, %r here); unset it", RETIRED_ENV, namespace)
        return None
    return (f"{RETIRED_ENV}={value!r} is no longer read: executions are kept under "
            f"settings.redis_namespace ({namespace!r}) with every other key. Set "
            f"settings.redis_namespace: {value} to serve the executions kept under "
            f"'{value}:wf:' (the other keys, limits and spend among them, then start "
            f"empty there), or unset {RETIRED_ENV} to leave them behind.")
