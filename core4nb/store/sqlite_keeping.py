"""The embedded store's housekeeping: blob sweeps, left-behind roots, retention of finished trees, space given back.

A mixin of :class:`~core4nb.store.sqlite.SQLiteStore` (it uses the store's write transactions,
reads and blob files): every write here runs under the database's write lock, so a prune, a sweep
and an insert that relies on a stored blob never interleave.
"""

from __future__ import annotations

import json
import time

from core4nb.store import base, bell, sqlite_file
from core4nb.store import sqlite_sql as sql


class SQLiteHousekeeping:
    """Blob sweeps, settling left-behind roots, prune, usage, settings and the housekeeping turn of the embedded
    store."""

    def sweep_blobs(self, older_than: float = base.DEFAULT_SWEEP_AGE, *, dry_run: bool = False) -> base.BlobSweep:
        with self._tx() as conn:
            kept, cutoff = sql.referenced_blobs(conn), time.time() - older_than
            orphans = [b for b in self.blobs.listing() if b.digest not in kept and b.mtime <= cutoff]
            if not dry_run:
                self.blobs.delete(b.digest for b in orphans)
        return base.BlobSweep(len(orphans), sum(b.size for b in orphans))

    def settle_roots(self) -> int:
        roots = [row[0] for row in self._read("SELECT id FROM queue WHERE state = 'gathering'")]
        if not roots:  # the common case: no write lock
            return 0
        with self._tx() as conn:
            gathered = sql.gather_roots(conn, roots, time.time())
        bell.ring_after(self._bells, gathered)
        return len(gathered)

    def _disk_size(self) -> int:
        files = [self.path, *(self.path.with_name(self.path.name + end) for end in ("-wal", "-shm"))]
        return sum(p.stat().st_size for p in files if p.exists()) + self.blobs.total_size()

    def prune(self, older_than: float, *, dry_run: bool = False) -> base.PruneReport:
        before, now = self._disk_size(), time.time()
        with self._tx() as conn:
            trees = conn.execute(sql.PRUNABLE, (now - older_than,)).fetchall()
            report = base.PruneReport(roots=[row[0] for row in trees])
            if not trees:
                return report
            where, params = "root_id IN (SELECT value FROM json_each(?))", [json.dumps(report.roots)]
            named = sql.referenced_blobs(conn, where, params)
            orphans = named - sql.referenced_blobs(conn, f"NOT ({where})", params)
            sizes = {b.digest: b.size for b in self.blobs.listing() if b.digest in orphans}
            report.blobs = base.BlobSweep(len(sizes), sum(sizes.values()))
            if dry_run:
                report.jobs = conn.execute(f"SELECT COUNT(*) FROM queue WHERE {where}", params).fetchone()[0]
                return report
            report.jobs = conn.execute(f"DELETE FROM queue WHERE {where}", params).rowcount
            conn.executemany("INSERT OR REPLACE INTO pruned (root_id, pruned_at, finished_at) VALUES (?, ?, ?)",
                             [(root, now, done) for root, done in trees])
            self.blobs.delete(orphans)
        with self._errors():
            # Free pages back to the file system. executescript: it runs the pragma to its end (execute
            # would free one page per step), in its own short write transaction.
            sqlite_file.retry_busy(lambda: self._conn().executescript("PRAGMA incremental_vacuum;"))
            # The write-ahead log shrinks too, once no reader is inside it.
            self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        report.freed = max(0, before - self._disk_size())
        return report

    def usage(self, older_than: float) -> base.StoreUsage:
        waiting = self._read(sql.WAITING, (time.time() - older_than,))[0][0]
        return base.StoreUsage(self._disk_size(), waiting)

    def _due(self, interval: float) -> bool:
        last = self.get_setting("housekeeping_at")
        return last is None or time.time() - float(last) >= interval

    def get_setting(self, name: str) -> str | None:
        rows = self._read("SELECT value FROM setting WHERE name = ?", (name,))
        return rows[0][0] if rows else None

    def set_setting(self, name: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO setting (name, value) VALUES (?, ?)", (name, value))

    def housekeeping_turn(self, worker: str, interval: float) -> bool:
        if not self._due(interval):  # a read first: 32 nodes starting at once must not queue on the lock
            return False
        with self._tx() as conn:  # under the write lock: one node's turn
            row = conn.execute("SELECT value FROM setting WHERE name = 'housekeeping_at'").fetchone()
            now = time.time()
            if row is not None and now - float(row[0]) < interval:
                return False
            conn.execute("INSERT OR REPLACE INTO setting (name, value) VALUES ('housekeeping_at', ?)", (repr(now),))
        return True

