"""PostgreSQL: what a claim costs the server as the number of open leases grows.

Many worker processes sharing one queue hold many leases at once (80 processes at
concurrency 100: 8 000). Each claim here takes 21 tasks and carries the acks of 7
(as a busy worker's claims do), and leaves the other 14 leased, so the open leases
grow by 14 per claim. Printed: the server process's CPU time and the wall time per
claim, over the first and the last 100 claims. The table is analyzed after the push
(as autovacuum soon would), so the planner's statistics say few leases are open.

Settles, and since schema 5 the reclaim inside ``claim()``, find a lease by the
primary key, so both figures stay flat (0.8 ms of server CPU per claim here). When
they read the index of every open lease instead, the cost grew with the leases: before
schema 4 (settles and reclaim), 1.2 ms then 2.4 ms; with schema 4 (the reclaim alone),
0.8 ms then 1.0-1.1 ms.

    .venv/bin/python bench/bench_pg_leases.py
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import trio
from bench_postgres import DSN, reachable

from turret import Job
from turret.backends import PostgresBackend

CLAIMS = 600
TAKE, ACK = 21, 7


def main() -> int:
    try:
        import psycopg
    except ImportError:
        print("bench_pg_leases: skipped, psycopg is not installed (turret[postgres])")
        return 0
    from turret.backends import _pg_sql as sql

    if not reachable(DSN):
        print(f"bench_pg_leases: skipped, no PostgreSQL at {DSN}")
        return 0
    conn = psycopg.connect(DSN, autocommit=True)
    schema = f"bench_leases_{os.getpid()}"

    async def push() -> None:
        async with PostgresBackend.open(DSN, schema=schema) as backend:
            for _ in range(CLAIMS * TAKE // 1000 + 1):
                await backend.push_many([Job(None) for _ in range(1000)])

    try:
        trio.run(push)
        # As autovacuum would soon after such a push: statistics that say few leases are
        # open (plans must not depend on them).
        conn.execute(f'ANALYZE "{schema}".tasks')
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        pg = conn.pgconn
        pg.prepare(b"claim", sql.CLAIM_ACKING.replace("{s}", f'"{schema}"').encode())
        tick = os.sysconf("SC_CLK_TCK")
        stat = f"/proc/{pid}/stat"  # the server process, when it runs on this machine
        local = os.path.exists(stat)

        def server_cpu() -> float:
            if not local:
                return 0.0
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick

        acks: list[tuple[bytes, bytes]] = []
        walls, cpus = [], []
        for _ in range(CLAIMS):
            now = time.time()
            params = [b"default", b"w", b"%d" % TAKE, repr(now).encode(), repr(now + 60).encode()]
            params += [b"3", b",".join(i for i, _ in acks), b",".join(t for _, t in acks)]
            cpu, start = server_cpu(), time.perf_counter()
            res = pg.exec_prepared(b"claim", params)
            walls.append(time.perf_counter() - start)
            cpus.append(server_cpu() - cpu)
            if res.status != psycopg.pq.ExecStatus.TUPLES_OK:
                raise RuntimeError(res.get_error_message())
            claimed = [
                (res.get_value(r, 1), res.get_value(r, 9))
                for r in range(res.ntuples)
                if res.get_value(r, 0) == b"0"
            ]
            acks = [(i or b"", t or b"") for i, t in claimed[:ACK]]
    finally:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        conn.close()
    open_leases = CLAIMS * (TAKE - ACK)
    print(f"claims of {TAKE} carrying {ACK} acks; open leases grow to ~{open_leases}:")
    if not local:
        print("  (the server runs elsewhere: its CPU time is not visible here)")
    for label, part in (("first 100", slice(0, 100)), ("last 100", slice(-100, None))):
        cpu = f"server CPU {1000 * sum(cpus[part]) / 100:.2f} ms/claim, " if local else ""
        print(f"  {label:9}  {cpu}wall p50 {1000 * statistics.median(walls[part]):.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
