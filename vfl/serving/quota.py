"""How many IDs each client may have scored per sliding minute (``[serving] ids_per_minute``).

Whoever may call the guest's API learns, per ID, whether each host knows it (a score, or a 404
naming the host). A quota bounds how fast one client can sweep IDs. The client is its API key's
name when ``[serving] api_keys`` is set, else its TCP peer address (proxy headers are ignored).

Two kinds, with the same ``take(client, n)``:

* :class:`IdQuota`, in the guest process's memory (the default): each replica of the service
  keeps its own count, so k replicas behind a load balancer allow k times the quota;
* :class:`SqlIdQuota` (``[serving] quota_store = "<SQLAlchemy URL>"``): every replica counts in
  one table of a shared database, so the quota holds for the whole service.
"""
from __future__ import annotations

import collections
import time
from typing import Callable

WINDOW = 60.0      # seconds: a sliding minute


class IdQuota:
    """The quota counted in this process only (0: no limit)."""

    blocking = False       # take() only touches memory: the event loop may call it directly

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute, self._clock = int(per_minute), clock
        self._spent: collections.OrderedDict[str, collections.deque] = collections.OrderedDict()   # by last use

    def take(self, client: str, n: int) -> bool:
        """Count ``n`` IDs for ``client`` and say yes, or say no and count nothing."""
        if self.per_minute <= 0:
            return True
        now = self._clock()
        while self._spent:                     # forget the clients quiet for a minute, least recent first:
            who, spent = next(iter(self._spent.items()))   # a sweep from many addresses must not grow
            if spent[-1][0] > now - WINDOW:    # memory, nor cost more than its own requests
                break
            del self._spent[who]
        spent = self._spent.setdefault(client, collections.deque())
        while spent and spent[0][0] <= now - WINDOW:
            spent.popleft()
        if sum(k for _, k in spent) + n > self.per_minute:
            if not spent:
                del self._spent[client]
            return False
        spent.append((now, n))
        self._spent.move_to_end(client)
        return True

    def close(self) -> None:
        """Nothing to release (as :meth:`SqlIdQuota.close` for a shared store)."""


class SqlIdQuota:
    """The quota counted in a table every replica shares (``vfl_id_quota``, created if missing).

    A request first commits its claim, then sums the client's claims of the last minute, the
    others' committed ones included, and withdraws its own if the sum is over the quota. So
    whatever the interleaving, the IDs granted in any minute never exceed the quota: two
    racing claims may both be refused, never both granted past it. Times are the wall clock
    (``time.time``), which replicas on different machines share; ``job`` keeps jobs apart in
    one database. Blocking: call it from a worker thread.
    """

    TABLE = "vfl_id_quota"
    blocking = True        # take() waits on the database: call it from a worker thread

    def __init__(self, url: str, per_minute: int, job: str, clock: Callable[[], float] = time.time) -> None:
        from sqlalchemy import Column, Float, Integer, MetaData, String, Table, create_engine
        self.per_minute, self.job, self._clock = int(per_minute), job, clock
        self._engine = create_engine(url)
        meta = MetaData()
        self._t = Table(self.TABLE, meta,
                        Column("claim", Integer, primary_key=True, autoincrement=True),
                        Column("job", String(255), nullable=False, index=True),
                        Column("client", String(255), nullable=False),
                        Column("at", Float, nullable=False),
                        Column("ids", Integer, nullable=False))
        meta.create_all(self._engine)

    def take(self, client: str, n: int) -> bool:
        """Count ``n`` IDs for ``client`` and say yes, or say no and count nothing."""
        from sqlalchemy import delete, func, insert, select
        if self.per_minute <= 0:
            return True
        if n > self.per_minute:
            return False
        t, now = self._t, self._clock()
        with self._engine.begin() as db:                     # commit the claim first ...
            db.execute(delete(t).where(t.c.job == self.job, t.c.at <= now - 2 * WINDOW))
            claim = db.execute(insert(t).values(job=self.job, client=client, at=now, ids=n)).inserted_primary_key[0]
        with self._engine.begin() as db:                     # ... then count every committed one
            used = db.execute(select(func.coalesce(func.sum(t.c.ids), 0)).where(
                t.c.job == self.job, t.c.client == client, t.c.at > now - WINDOW)).scalar_one()
            if used > self.per_minute:
                db.execute(delete(t).where(t.c.claim == claim))
                return False
        return True

    def close(self) -> None:
        """Release the store's connections (the service's shutdown)."""
        self._engine.dispose()


def id_quota(per_minute: int, store: str, job: str) -> "IdQuota | SqlIdQuota":
    """The job's quota: shared through ``store`` (an SQLAlchemy URL) when given, else in-process."""
    return SqlIdQuota(store, per_minute, job) if store and per_minute > 0 else IdQuota(per_minute)
