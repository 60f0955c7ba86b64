"""Group commit of issued-card rows: one thread writes the cards of every concurrent hook call at once.

A hook call hands its cards to `CardWriter.record` and waits (without holding the event loop) until
they are committed, queued for an outage (cds.store.CardBacklog) or set aside; only then does it
answer, so nothing acknowledged is lost. The writer thread (cds.groupcommit) takes everything waiting
in its inbox and writes it in one transaction: under load one commit carries many calls, and the
database's per-commit cost is shared between them.

    writer = CardWriter(backlog)
    queued = await writer.record(pending)   # False: committed; True: queued while the store is down
    writer.close()                          # the calls still waiting are written first
"""

from __future__ import annotations

from cds.groupcommit import GroupCommit
from cds.store import CardBacklog, PendingCards

__all__ = ["CardWriter"]


class CardWriter(GroupCommit[PendingCards, bool]):
    """One writer thread in front of a CardBacklog; at most `max_batch` hook calls per transaction."""

    def __init__(self, backlog: CardBacklog, *, max_batch: int = 256) -> None:
        super().__init__(backlog.record_many, name="card writer", max_batch=max_batch)

    async def record(self, pending: PendingCards) -> bool:
        """Wait until the cards are committed (False) or queued for an outage (True).

        Raises StoreUnavailableError when they could be neither (the outage queue is full).
        """
        return await self.run(pending)
