"""Distributed send through a queue table on a PostgreSQL index (``conquest-run worker``).

A run's send work is a set of rows in ``conquestrunsendqueue`` (``queue.py``): one per
instance of a step, with its ``ObjectFile`` and its destination.  Workers on any host
(``drain.py``) lease batches of rows with ``SELECT ... FOR UPDATE SKIP LOCKED`` (a row that is
queued, or leased but with its lease expired), send each batch through the ordinary sender
(``DicomTransport``: one association per destination and batch), and settle each instance as
the peer answers.

The guarantee, exactly:

* **Never sent again once confirmed.**  A row is marked ``sent`` in one statement that also
  checks the lease is still the worker's (``UPDATE ... WHERE leaseowner = me AND state =
  'leased'``) and, in the same statement, writes its ``ConquestRunAudit`` row.  A ``sent`` row is
  never leased again, by anyone.  A worker whose lease passed to another worker cannot overwrite
  that worker's outcome (its confirm matches no row; it is counted as ``lost``).
* **At least once on the wire, at most one extra copy per dead worker.**  A duplicate C-STORE is
  possible in one window only: a worker dies (``kill -9``, power loss, a lost connection to the
  database) after the peer answered an instance's C-STORE and before that instance's confirm
  committed.  Its lease then expires and another worker sends that instance again.  The window
  is one instance per worker (the one in flight), because each instance is confirmed right after
  its own C-STORE response, not at the end of the batch.
* **A stalled worker stops before its lease can have expired.**  A heartbeat thread renews the
  worker's leases every third of the lease time; when no renewal succeeded for a whole lease
  time (measured on the worker's own clock from before the renewal was sent) the worker sends
  no further instance and gives its leases back.  Only an instance whose single C-STORE takes
  longer than the lease can still be in flight when another worker takes it: choose the lease
  well above the DIMSE timeout.
* **A worker that dies loses nothing.**  Its leased rows are taken by another worker once the
  lease expires; a row whose lease expired ``max_attempts`` times (a file that kills every worker
  that sends it) is failed with that reason instead of killing workers forever.

Per-instance refusals (a peer status, a file missing or unreadable) are final (``failed``); a
peer that cannot be reached or refuses the association puts the batch back with a back-off
until the row has had ``max_attempts`` tries, then fails it with the peer's reason.
"""

from .drain import DrainResult, drain, worker_id
from .queue import (QUEUE_TABLE, QueueItem, QueuedRow, confirm, confirmed, enqueue,
                    ensure_queue, fail, items_of_step, lease, outcomes, progress, release,
                    renew)

__all__ = ["QUEUE_TABLE", "QueueItem", "QueuedRow", "ensure_queue", "enqueue", "lease", "renew",
           "confirm", "fail", "release", "progress", "outcomes", "confirmed", "items_of_step",
           "drain", "DrainResult", "worker_id"]
