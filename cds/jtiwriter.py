"""Group commit of JWT ids: the replay check of every concurrent authenticated call in one transaction.

Each authenticated hook call must record its token's (iss, jti) before it is answered, and refuse a
token whose id is already recorded and unexpired (cds.security.TokenVerifier, the replay guard of
cds.api.app). One commit per call cost about 375 µs of CPU on SQLite and a WAL flush on PostgreSQL;
with SQLite's one writer, concurrent calls queued on the write lock. The verifying threads hand their
ids to one writer thread (cds.groupcommit) and wait for their own answer; the writer records every id
waiting, in arrival order, in one transaction (`Store.remember_jtis`): two calls with one id in a
batch are a first use and a replay, as they would be one after the other.

While the store is down every waiting call gets StoreUnavailableError, and the replay guard falls
back to this worker's cds.security.JtiCache, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from cds.groupcommit import GroupCommit
from cds.store import Store, StoreUnavailableError

__all__ = ["JtiWriter"]

# (iss, jti, expires_at, the caller's now)
SeenId = tuple[str, str, datetime, datetime]


class JtiWriter(GroupCommit[SeenId, bool]):
    """One writer thread recording JWT ids; `remember` blocks the calling thread (never the loop)."""

    def __init__(
        self, store: Store, gate: Callable[[], AbstractContextManager[object]], *, max_batch: int = 256
    ) -> None:
        self._store = store
        self._gate = gate
        super().__init__(self._record, name="jti writer", max_batch=max_batch)

    def remember(self, iss: str, jti: str, expires_at: datetime, now: datetime) -> bool:
        """True for a first use; False for a replay. Raises StoreUnavailableError while the store is down."""
        return self.wait((iss, jti, expires_at, now))

    def _record(self, ids: list[SeenId]) -> list[bool | BaseException]:
        # One `now` for the batch: the earliest, so an old id that expired only at a later caller's now
        # still counts as live (the caller is refused, never wrongly accepted).
        now = min(seen[3] for seen in ids)
        try:
            with self._gate():
                fresh = self._store.remember_jtis([(iss, jti, exp) for iss, jti, exp, _ in ids], now=now)
        except StoreUnavailableError as down:
            return [down] * len(ids)
        return list(fresh)
