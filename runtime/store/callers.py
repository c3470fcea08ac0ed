"""What an execution or a batch keeps of a JWT's caller, to run as it again without its token.

A key of the config is found again by its name. A caller signed in with a token
(runtime/identity.py) is in no config: its name (``<issuer>#<principal>``) gives its
issuer and principal, but the team a claim of its token mapped it to is in the token
alone, and the token is never kept. So work that outlives the request (its next step
on another replica, or after a restart) keeps the three, stored as JSON the same way
by SQLite and Redis::

    {"issuer": "corp", "principal": "alice", "team": "engineering"}

Records written before these were kept have none (``TokenCaller.from_json(None)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TokenCaller:
    """A JWT's caller as it was when it started the work: its issuer's name, its principal
    (the issuer's principal claim) and the team it was in (None: none)."""

    issuer: str
    principal: str
    team: str | None

    @property
    def name(self) -> str:
        """Its name as keys are named: ``corp#alice``."""
        return f"{self.issuer}#{self.principal}"

    def as_json(self) -> dict[str, str | None]:
        return {"issuer": self.issuer, "principal": self.principal, "team": self.team}

    @classmethod
    def from_json(cls, value: Any) -> TokenCaller | None:
        """The caller ``as_json`` wrote; None for anything else (a record without one).

        >>> TokenCaller.from_json({"issuer": "corp", "principal": "alice", "team": None})
        TokenCaller(issuer='corp', principal='alice', team=None)
        """
        if not isinstance(value, dict):
            return None
        issuer, principal, team = value.get("issuer"), value.get("principal"), value.get("team")
        if not (isinstance(issuer, str) and isinstance(principal, str)
                and (team is None or isinstance(team, str))):
            return None
        return cls(issuer, principal, team)
