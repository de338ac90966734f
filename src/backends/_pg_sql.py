"""The PostgreSQL backend's schema (versioned migrations) and its statements.

Every statement is a template with ``{s}`` for the quoted schema name; nothing else is
ever formatted into SQL (values are always bound parameters). Arrays are bound in
binary (``%(name)b``): cheaper to dump and to parse than their text form.

A task has a lease ``deadline`` exactly while it is leased (a CHECK constraint since
schema 4). The statements that settle or renew leases by (id, token) therefore test
``deadline > now`` and not ``state = 'leased'``: with the state in the query the planner
may answer it from the partial index ``tasks_leased``, scanning every lease of every
worker (and the entries of leases settled since the last vacuum) for each batch,
instead of probing the primary key once per task (``bench/bench_pg_leases.py``: with
leases growing to ~8 400, a claim carrying 7 acks cost the server 1.2 ms of CPU, then
2.4 ms that way; 0.9 ms throughout by key).
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "SCHEMA_VERSION"]

_LIVE = "('pending', 'scheduled', 'leased')"

#: Reclaim expired leases; ``{where}`` narrows it (one queue inside ``claim``, or none);
#: ``moved`` returns ``{returning}`` per reclaimed task. The task keeps its place in
#: line (order_key unchanged) and is due at once; after ``max_lost`` expiries, on a
#: cancel request, or on its last attempt it goes dead.
#:
#: ``moved`` rechecks the locked rows by ``deadline <= now`` alone (a deadline exists
#: exactly while leased), so it finds them by primary key, driven by ``expired``. With
#: ``state = 'leased'`` there too (schema 1 to 4), the generic plan of ``claim()``
#: could read the whole ``tasks_leased`` index, every lease of every queue, on each
#: claim, even with nothing expired: 0.13 ms of a claim's 1 ms of server CPU with ~100
#: leases open, and growing with them (``bench/bench_pg_leases.py``).
RECLAIM = """
    WITH expired AS (
        SELECT t.id FROM {s}.tasks t
        WHERE t.state = 'leased' AND t.deadline <= {now} {where}
        FOR UPDATE SKIP LOCKED
    ), moved AS (
        UPDATE {s}.tasks t SET
            lost = t.lost + 1,
            last_error = 'worker lost',
            owner = NULL,
            deadline = NULL,
            cancel_reason = NULL,
            state = CASE
                WHEN t.cancel_reason IS NOT NULL OR t.lost + 1 >= {max_lost}
                    OR t.attempt >= t.max_attempts THEN 'dead'
                ELSE 'pending' END,
            run_at = CASE
                WHEN t.cancel_reason IS NOT NULL OR t.lost + 1 >= {max_lost}
                    OR t.attempt >= t.max_attempts THEN t.run_at
                ELSE {now} END,
            dead_reason = CASE
                WHEN t.cancel_reason IS NOT NULL
                    THEN 'cancelled: ' || t.cancel_reason || ' (worker lost)'
                WHEN t.lost + 1 >= {max_lost} THEN 'worker lost ' || (t.lost + 1) || ' times'
                WHEN t.attempt >= t.max_attempts
                    THEN 'worker lost on the last attempt (' || t.attempt || ')'
                ELSE t.dead_reason END
        FROM expired e WHERE t.id = e.id AND t.deadline <= {now}
        RETURNING {returning}
    )
"""

#: RECLAIM as schema 1 and 2 released it (a released migration never changes).
_RECLAIM_V1 = RECLAIM.replace(
    "t.id = e.id AND t.deadline", "t.id = e.id AND t.state = 'leased' AND t.deadline"
)

#: ``reclaim()``: every queue's expired leases (``%(now)s``, ``%(max_lost)s``), each
#: added to its queue's ``reclaimed`` counter; counter rows are locked in name order, so
#: two concurrent calls never deadlock. Yields how many leases were reclaimed.
RECLAIM_COUNTED = (
    RECLAIM.format(s="{s}", now="%(now)s", max_lost="%(max_lost)s", where="", returning="t.queue")
    + """
    , counted AS (
        SELECT m.queue, count(*) AS n FROM moved m GROUP BY m.queue
    ), bumped AS (
        INSERT INTO {s}.queues AS q (name, reclaimed)
        SELECT c.queue, c.n FROM counted c ORDER BY c.queue
        ON CONFLICT (name) DO UPDATE SET reclaimed = q.reclaimed + excluded.reclaimed
    )
    SELECT coalesce(sum(c.n), 0) FROM counted c
"""
)


_CLAIM_HEAD = """
    CREATE FUNCTION {s}.claim(
        p_queue text, p_owner text, p_limit integer, p_now double precision,
        p_deadline double precision, p_max_lost integer
    ) RETURNS TABLE (
        id text, payload bytea, attempt integer, max_attempts integer, priority integer,
        run_at double precision, enqueued_at double precision, headers jsonb, token bigint
    ) LANGUAGE plpgsql AS $fn$
    #variable_conflict use_column
    DECLARE
        n_reclaimed integer;
    BEGIN
    """
_CLAIM_TAIL = """
        IF EXISTS (SELECT 1 FROM {s}.queues q WHERE q.name = p_queue AND q.paused) THEN
            RETURN;
        END IF;
        RETURN QUERY
        WITH picked AS (
            SELECT c.id, nextval('{s}.token') AS tok FROM (
                SELECT t.id FROM {s}.tasks t
                WHERE t.queue = p_queue AND t.state IN ('pending', 'scheduled')
                    AND t.run_at <= p_now
                ORDER BY t.order_key, t.id
                LIMIT p_limit
                FOR UPDATE SKIP LOCKED
            ) c
        ), upd AS (
            UPDATE {s}.tasks t SET
                state = 'leased', attempt = t.attempt + 1, token = p.tok,
                owner = p_owner, deadline = p_deadline
            FROM picked p WHERE t.id = p.id
            RETURNING t.id, t.payload, t.attempt, t.max_attempts, t.priority, t.run_at,
                t.enqueued_at, t.headers, t.token, t.order_key
        )
        SELECT u.id, u.payload, u.attempt, u.max_attempts, u.priority, u.run_at,
            u.enqueued_at, u.headers, u.token
        FROM upd u ORDER BY u.order_key, u.id;
    END
    $fn$
    """

#: v2: the queue's ``reclaimed`` counter grows in the same statement as the reclaim;
#: its row is only written when something was reclaimed (claims stay read-only on
#: ``queues`` otherwise).
_COUNT_RECLAIMED = """
        IF n_reclaimed > 0 THEN
            INSERT INTO {s}.queues AS q (name, reclaimed) VALUES (p_queue, n_reclaimed)
            ON CONFLICT (name) DO UPDATE SET reclaimed = q.reclaimed + excluded.reclaimed;
        END IF;"""


def _claim_function(create: str, count: str, reclaim: str = RECLAIM) -> str:
    """The ``claim()`` SQL function: ``create`` is the DDL verb; ``count`` runs right
    after the reclaim (the ``reclaim`` template), with ``n_reclaimed`` (how many leases
    it reclaimed) set."""
    return (
        _CLAIM_HEAD.replace("CREATE FUNCTION", create, 1)
        + reclaim.format(
            s="{s}",
            now="p_now",
            max_lost="p_max_lost",
            where="AND t.queue = p_queue",
            returning="1",
        )
        + """
        SELECT count(*) INTO n_reclaimed FROM moved;"""
        + count
        + _CLAIM_TAIL
    )


#: Migrations, applied in order under an advisory lock; ``{s}.migrations`` records them.
#: A released step never changes: a new schema is a new step at the end (a test pins
#: the text of every released step).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 1: tasks, queues (paused flags), the token sequence, claim().
    (
        """
        CREATE TABLE {s}.tasks (
            id text COLLATE "C" PRIMARY KEY,
            queue text COLLATE "C" NOT NULL,
            state text NOT NULL,
            payload bytea NOT NULL,
            priority integer NOT NULL,
            attempt integer NOT NULL DEFAULT 0,
            max_attempts integer NOT NULL,
            run_at double precision NOT NULL,
            enqueued_at double precision NOT NULL,
            order_key double precision NOT NULL,
            headers jsonb NOT NULL,
            unique_key text,
            owner text,
            deadline double precision,
            token bigint NOT NULL DEFAULT 0,
            lost integer NOT NULL DEFAULT 0,
            result bytea,
            result_expires_at double precision,
            last_error text,
            dead_reason text,
            cancel_reason text
        )
        """,
        # Claim order: the contract's key, then FIFO (ULIDs sort by time under "C").
        "CREATE INDEX tasks_claim ON {s}.tasks (queue, order_key, id) "
        "WHERE state IN ('pending', 'scheduled')",
        "CREATE INDEX tasks_due ON {s}.tasks (queue, run_at) WHERE state = 'scheduled'",
        "CREATE INDEX tasks_leased ON {s}.tasks (queue, deadline) WHERE state = 'leased'",
        "CREATE INDEX tasks_dead ON {s}.tasks (queue, id) WHERE state = 'dead'",
        f"CREATE UNIQUE INDEX tasks_unique ON {{s}}.tasks (unique_key) WHERE state IN {_LIVE}",
        'CREATE TABLE {s}.queues (name text COLLATE "C" PRIMARY KEY, '
        "paused boolean NOT NULL DEFAULT false)",
        # Fencing tokens: one sequence for the whole store, so a token names one claim.
        "CREATE SEQUENCE {s}.token",
        _claim_function("CREATE FUNCTION", "", _RECLAIM_V1),
    ),
    # 2: per-queue count of reclaimed leases (QueueStats.reclaimed), kept by claim()
    # and reclaim(). Adding a column with a constant default rewrites nothing.
    (
        "ALTER TABLE {s}.queues ADD COLUMN reclaimed bigint NOT NULL DEFAULT 0",
        _claim_function("CREATE OR REPLACE FUNCTION", _COUNT_RECLAIMED, _RECLAIM_V1),
    ),
    # 3: done tasks are forgotten ``done_ttl`` after they finish (``finished_at``); the
    # done tasks already stored count as finished at the upgrade.
    (
        "ALTER TABLE {s}.tasks ADD COLUMN finished_at double precision",
        "UPDATE {s}.tasks SET finished_at = extract(epoch FROM clock_timestamp()) "
        "WHERE state = 'done'",
        "CREATE INDEX tasks_finished ON {s}.tasks (finished_at) WHERE state = 'done'",
    ),
    # 4: a lease deadline exactly while leased (module docstring), made a constraint.
    # Every turret writes rows that way; the two updates only mend a hand-edited row
    # (a leased row without a deadline is then expired, and reclaimed by the next claim).
    (
        "UPDATE {s}.tasks SET deadline = NULL WHERE state <> 'leased' AND deadline IS NOT NULL",
        "UPDATE {s}.tasks SET deadline = 0 WHERE state = 'leased' AND deadline IS NULL",
        "ALTER TABLE {s}.tasks ADD CONSTRAINT tasks_deadline_while_leased "
        "CHECK ((state = 'leased') = (deadline IS NOT NULL))",
    ),
    # 5: claim() reclaims by primary key (RECLAIM); tasks_unique holds only the tasks
    # that have a unique key, so a push or claim of one that has none (most) writes one
    # index entry fewer. Rebuilding the index reads the table once, under the lock.
    (
        _claim_function("CREATE OR REPLACE FUNCTION", _COUNT_RECLAIMED),
        "DROP INDEX {s}.tasks_unique",
        "CREATE UNIQUE INDEX tasks_unique ON {s}.tasks (unique_key) "
        f"WHERE unique_key IS NOT NULL AND state IN {_LIVE}",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

COLUMNS = (
    "id, queue, state, payload, priority, attempt, max_attempts, run_at, enqueued_at, "
    "headers, unique_key, owner, deadline, token, lost, result, result_expires_at, "
    "last_error, dead_reason, cancel_reason"
)

PUSH = """
    WITH ins AS (
        INSERT INTO {s}.tasks (id, queue, state, payload, priority, max_attempts, run_at,
            enqueued_at, order_key, headers, unique_key)
        SELECT i.id, i.queue, i.state, i.payload, i.priority, i.max_attempts, i.run_at,
            %(now)s, i.order_key, i.headers::jsonb, i.unique_key
        FROM unnest(%(ids)b::text[], %(queues)b::text[], %(states)b::text[],
            %(payloads)b::bytea[], %(priorities)b::int4[], %(max_attempts)b::int4[],
            %(run_ats)b::float8[], %(order_keys)b::float8[], %(headers)b::text[],
            %(unique_keys)b::text[])
            AS i(id, queue, state, payload, priority, max_attempts, run_at, order_key,
                headers, unique_key)
        ON CONFLICT DO NOTHING
        RETURNING id, queue
    )
    SELECT
        (SELECT array_agg(id) FROM ins),
        (SELECT count(pg_notify(%(channel)s, q.queue))
            FROM (SELECT DISTINCT queue FROM ins) q)
"""

LIVE_BY_KEY = (
    f"SELECT unique_key, id FROM {{s}}.tasks WHERE unique_key = ANY(%s) AND state IN {_LIVE}"
)

#: Acks and renewals commit without waiting for the WAL flush (``synchronous_commit``
#: off for their own transaction only): losing one in a *server* crash is harmless under
#: at-least-once (the task runs again; a lease expires early and is reclaimed with a new
#: token), and it saves a disk flush (several ms) on the hot path. Claims, pushes and the
#: other settles stay durable.
_ASYNC_COMMIT = "SELECT set_config('synchronous_commit', 'off', true)"


def _ack(inputs: str, columns: str, result: str, expires: str) -> str:
    return f"""
    WITH cfg AS ({_ASYNC_COMMIT}), i AS (
        SELECT * FROM unnest({inputs}) AS i({columns})
    )
    UPDATE {{s}}.tasks t SET state = 'done', result = {result}, result_expires_at = {expires},
        finished_at = i.now, owner = NULL, deadline = NULL, cancel_reason = NULL
    FROM i, cfg
    WHERE t.id = i.id AND t.token = i.token AND t.deadline > i.now
    RETURNING t.id, t.token
"""


ACK = _ack(
    "%(ids)b::text[], %(tokens)b::int8[], %(results)b::bytea[], %(expires)b::float8[], "
    "%(nows)b::float8[]",
    "id, token, result, expires, now",
    "i.result",
    "i.expires",
)
#: ACK for a batch that stores no result (the usual one), run as a prepared statement
#: (``TrioConnection.run_prepared``): ids, tokens and times each come as one
#: comma-separated text (task ids are ULIDs, never a comma), far cheaper to send than
#: arrays built by psycopg's dumpers.
ACK_NO_RESULTS = _ack(
    "string_to_array($1, ','), string_to_array($2, ',')::int8[], "
    "string_to_array($3, ',')::float8[]",
    "id, token, now",
    "NULL",
    "NULL",
)

#: A claim, run as a prepared statement: queue, owner, limit, now, lease deadline and
#: max_lost in text; headers as text (most tasks have none, and "{}" needs no JSON
#: parse per row).
CLAIM = (
    "SELECT id, payload, attempt, max_attempts, priority, run_at, enqueued_at, "
    "headers::text, token FROM {s}.claim($1, $2, $3, $4, $5, $6)"
)

#: CLAIM that also acks the tasks its caller's worker has finished since its last call
#: (ids and tokens as comma-separated texts in $7 and $8): one statement, one round
#: trip and one commit for both (see ``PostgresBackend.ack_many``). The acks use the
#: claim's time, so an ack (lease still valid) and the reclaim inside ``claim()`` (lease
#: expired) never touch the same row. Rows of kind 0 are claimed tasks, in the claim's
#: order; rows of kind 1 are the acks that matched (id, token).
CLAIM_ACKING = """
    WITH acked AS (
        UPDATE {s}.tasks t SET state = 'done', result = NULL, result_expires_at = NULL,
            finished_at = $4, owner = NULL, deadline = NULL, cancel_reason = NULL
        FROM unnest(string_to_array($7, ','), string_to_array($8, ',')::int8[])
            AS i(id, token)
        WHERE t.id = i.id AND t.token = i.token AND t.deadline > $4
        RETURNING t.id, t.token
    )
    SELECT 0, c.id, c.payload, c.attempt, c.max_attempts, c.priority, c.run_at,
        c.enqueued_at, c.headers::text, c.token, c.n
    FROM {s}.claim($1, $2, $3, $4, $5, $6) WITH ORDINALITY
        AS c(id, payload, attempt, max_attempts, priority, run_at, enqueued_at, headers,
            token, n)
    UNION ALL
    SELECT 1, a.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, a.token, NULL FROM acked a
    ORDER BY 1, 11
"""

#: Deletes up to ``limit`` done tasks kept past ``done_ttl`` whose result (if any) has
#: expired too; yields how many. Done tasks with no ``finished_at`` (acked by an older
#: turret still running) get one. Commits without the WAL flush: a lost prune only
#: means the rows go at the next one.
PRUNE = f"""
    WITH cfg AS ({_ASYNC_COMMIT}), unfinished AS (
        -- acked by a worker of a turret older than schema 3: retention starts now
        SELECT t.id FROM {{s}}.tasks t, cfg
        WHERE t.state = 'done' AND t.finished_at IS NULL
        LIMIT %(limit)s
        FOR UPDATE OF t SKIP LOCKED
    ), adopted AS (
        UPDATE {{s}}.tasks t SET finished_at = %(now)s FROM unfinished u WHERE t.id = u.id
    ), gone AS (
        SELECT t.id FROM {{s}}.tasks t, cfg
        WHERE t.state = 'done' AND t.finished_at <= %(cutoff)s
            AND (t.result_expires_at IS NULL OR t.result_expires_at <= %(now)s)
        LIMIT %(limit)s
        FOR UPDATE OF t SKIP LOCKED
    ), deleted AS (
        DELETE FROM {{s}}.tasks t USING gone g WHERE t.id = g.id RETURNING 1
    )
    SELECT count(*) FROM deleted
"""

#: ``NOT (KEPT_PAST)``: the row is not a done task past its retention (``get_task``).
KEPT_PAST = (
    "(state = 'done' AND finished_at IS NOT NULL AND finished_at <= %(cutoff)s "
    "AND (result_expires_at IS NULL OR result_expires_at <= %(now)s))"
)

RENEW = f"""
    WITH cfg AS ({_ASYNC_COMMIT}), i AS (
        SELECT * FROM unnest(%(ids)b::text[], %(tokens)b::int8[]) AS i(id, token)
    )
    UPDATE {{s}}.tasks t SET deadline = %(deadline)s
    FROM i, cfg
    WHERE t.id = i.id AND t.token = i.token AND t.deadline > %(now)s
    RETURNING t.id, t.token, t.cancel_reason IS NOT NULL
"""

_NOTIFY = """
    SELECT u.queue, u.state,
        CASE WHEN u.state IN ('pending', 'scheduled')
            THEN pg_notify(%(channel)s, u.queue)::text END
    FROM u
"""

RETRY = (
    """
    WITH u AS (
        UPDATE {s}.tasks SET
            last_error = %(error)s, owner = NULL, deadline = NULL,
            state = CASE WHEN cancel_reason IS NOT NULL THEN 'dead'
                WHEN %(run_at)s <= %(now)s THEN 'pending' ELSE 'scheduled' END,
            dead_reason = CASE WHEN cancel_reason IS NOT NULL
                THEN 'cancelled: ' || cancel_reason ELSE dead_reason END,
            run_at = CASE WHEN cancel_reason IS NOT NULL THEN run_at ELSE %(run_at)s END,
            order_key = CASE WHEN cancel_reason IS NOT NULL THEN order_key
                ELSE %(run_at)s - priority * %(aging)s END,
            cancel_reason = NULL
        WHERE id = %(id)s AND token = %(token)s AND deadline > %(now)s
        RETURNING queue, state
    )
"""
    + _NOTIFY
)

RELEASE = (
    """
    WITH u AS (
        UPDATE {s}.tasks SET
            attempt = attempt - 1, owner = NULL, deadline = NULL,
            state = CASE WHEN cancel_reason IS NOT NULL THEN 'dead' ELSE 'pending' END,
            dead_reason = CASE WHEN cancel_reason IS NOT NULL
                THEN 'cancelled: ' || cancel_reason ELSE dead_reason END,
            run_at = CASE WHEN cancel_reason IS NOT NULL THEN run_at
                ELSE least(run_at, %(now)s) END,
            cancel_reason = NULL
        WHERE id = %(id)s AND token = %(token)s AND deadline > %(now)s
        RETURNING queue, state
    )
"""
    + _NOTIFY
)

DEAD = """
    UPDATE {s}.tasks SET state = 'dead', dead_reason = %(reason)s, owner = NULL,
        deadline = NULL, cancel_reason = NULL
    WHERE id = %(id)s AND token = %(token)s AND deadline > %(now)s
    RETURNING queue
"""

CANCEL = f"""
    UPDATE {{s}}.tasks SET
        state = CASE WHEN state = 'leased' THEN state ELSE 'dead' END,
        dead_reason = CASE WHEN state = 'leased' THEN dead_reason
            ELSE 'cancelled: ' || %(reason)s END,
        cancel_reason = CASE WHEN state = 'leased' THEN %(reason)s ELSE NULL END
    WHERE id = %(id)s AND state IN {_LIVE}
    RETURNING 1
"""

NEXT_DUE = """
    SELECT
        (SELECT paused FROM {s}.queues WHERE name = %(queue)s),
        EXISTS (SELECT 1 FROM {s}.tasks WHERE queue = %(queue)s AND state = 'pending'),
        (SELECT min(run_at) FROM {s}.tasks WHERE queue = %(queue)s AND state = 'scheduled'),
        (SELECT min(deadline) FROM {s}.tasks WHERE queue = %(queue)s AND state = 'leased')
"""

STATS = """
    SELECT queue, state, count(*),
        count(*) FILTER (WHERE state = 'scheduled' AND run_at <= %(now)s)
    FROM {s}.tasks GROUP BY queue, state
"""

QUEUE_FLAGS = "SELECT name, paused, reclaimed FROM {s}.queues WHERE paused OR reclaimed > 0"

SET_PAUSED = """
    WITH u AS (
        INSERT INTO {s}.queues (name, paused) VALUES (%(queue)s, %(paused)s)
        ON CONFLICT (name) DO UPDATE SET paused = excluded.paused
        RETURNING name
    )
    SELECT CASE WHEN NOT %(paused)s THEN pg_notify(%(channel)s, u.name)::text END FROM u
"""

REPLAY_ONE = f"""
    UPDATE {{s}}.tasks t SET
        state = %(state)s, attempt = 0, lost = 0, dead_reason = NULL,
        run_at = %(run_at)s, order_key = %(run_at)s - t.priority * %(aging)s,
        unique_key = CASE WHEN EXISTS (
            SELECT 1 FROM {{s}}.tasks l
            WHERE l.unique_key = t.unique_key AND l.state IN {_LIVE}
        ) THEN NULL ELSE t.unique_key END
    WHERE t.id = %(id)s AND t.state = 'dead'
    RETURNING t.queue
"""
