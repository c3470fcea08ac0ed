"""A SIGHUP that comes before ``aigw serve`` can reload, noted and made once it is up.

SIGHUP's default action ends a process, and a gateway takes seconds to import its
runtime and compile its config: a ``systemctl reload`` or a logrotate ``kill -HUP`` in
that time ended it. The command line notes the signal from its first moment (before the
runtime is imported, which is why this module imports nothing of it), as does each
worker process; the server reloads once it is up if one came.
"""

from __future__ import annotations

import signal
import threading

EARLY_RELOAD = threading.Event()


def note_early_reloads() -> None:
    """From now until the server takes SIGHUP over, a SIGHUP sets ``EARLY_RELOAD``."""
    signal.signal(signal.SIGHUP, lambda _signum, _frame: EARLY_RELOAD.set())
