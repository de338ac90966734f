"""The Lua scripts of :class:`~turret.backends.RedisBackend`: every state change is one script.

Data layout (``P`` is the key prefix, default ``turret:``)::

    P t:<id>              HASH  one task: q queue, a args, p priority, m max_attempts,
                                h headers (JSON or ""), u unique key, e enqueued_at,
                                r run_at, o order key, s state, n attempt, t token,
                                w owner, d lease deadline, l lost, res result,
                                rx result expiry, err last error, dr dead reason,
                                c cancel reason, st token of the settle that finished it,
                                fa when it was acked (done)
    P q:<queue>:pending   ZSET  due tasks by order = eligible_at - priority * aging
                                (ties by id: ULIDs, so FIFO)
    P q:<queue>:scheduled ZSET  waiting tasks by run_at
    P q:<queue>:leases    ZSET  leased tasks by lease deadline (per task, not per worker)
    P q:<queue>:dead      ZSET  dead letters, score 0, so ordered by id
    P q:<queue>:done      ZSET  done tasks not yet forgotten, by when they are (the
                                done count; "+inf": kept for ever)
    P q:<queue>:stats     HASH  reclaimed: count of expired leases reclaimed
                                (dead-lettered or not), ever
    P q:<queue>:paused    STRING present while the queue is paused
    P u:<unique key>      STRING id of the live task holding the key
    P queues              SET   every queue name seen
    P token               STRING fencing token counter (INCR)
    P c:<nonce>           LIST  ids and tokens one claim call leased (1 minute), so a
                                call retried after a lost reply gets the same tasks
    P wake                STREAM wake-ups: XADD q=<queue> when work becomes due there
                                (capped at ~1000 entries); each process XREADs it
                                BLOCKing, resuming from its last id after a reconnect
    P q:<queue>:waiters   ZSET  idle consumers waiting for a handoff, by registration
                                expiry: member "<inbox> <lease ttl> <owner>"
    P q:<queue>:room      HASH  per waiter: how many more tasks it can take (its free
                                slots when it registered)
    P i:<inbox>           LIST  one consumer's inbox: tasks PUSH leased to it directly
                                (one ``handoff_item`` each); the consumer BLMPOPs it

Handoff: when a PUSH creates a due task in a queue that has a live waiter and nothing
that should go first (no pending task, no overdue scheduled task, no expired lease, not
paused), it leases the task to the oldest live waiter at once (attempt, token, owner,
deadline, as CLAIM would), removes that waiter and appends the task to its inbox: the
consumer's next claim returns it without a round trip. A waiter takes as many tasks as
it had free slots when it registered (then its registration goes). It expires
(its process may be dead); a task handed to a dead inbox is reclaimed at lease expiry.

Floats cross the boundary as strings: Python sends ``repr(x)`` (exact), Redis 7 turns
Lua numbers into arguments with ``%.17g`` (exact), and ``fmt`` below does the same.
"""

from __future__ import annotations

import re

__all__ = [
    "CANCEL",
    "CLAIM",
    "DEAD_LETTERS",
    "DRAIN",
    "NEXT_DUE",
    "PRUNE",
    "PUSH",
    "RECLAIM",
    "REGISTER",
    "RENEW",
    "REPLAY",
    "SETTLE",
    "SETTLE_CLAIM",
    "STATS",
    "UNREGISTER",
]

PRELUDE = r"""
local P = ARGV[1]
local wake = {}
local function tkey(id) return P .. 't:' .. id end
local function qkey(q, s) return P .. 'q:' .. q .. ':' .. s end
local function fmt(x) return string.format('%.17g', x) end

local function publish()
  for q, _ in pairs(wake) do
    redis.call('XADD', P .. 'wake', 'MAXLEN', '~', 1000, '*', 'q', q)
  end
end

local function unique_release(id, uk)
  if uk then
    local k = P .. 'u:' .. uk
    if redis.call('GET', k) == id then redis.call('DEL', k) end
  end
end

-- a task leaves the queue for good: owner and cancel request cleared, unique key freed
local function finish(id, q, uk, state)
  local tk = tkey(id)
  redis.call('HSET', tk, 's', state)
  redis.call('HDEL', tk, 'w', 'c')
  unique_release(id, uk)
end

local function to_dead(id, q, uk, reason)
  redis.call('HSET', tkey(id), 'dr', reason)
  finish(id, q, uk, 'dead')
  redis.call('ZADD', qkey(q, 'dead'), 0, id)
end

-- back in line: pending (order key ``o``) when due, else scheduled by run_at
local function make_ready(id, q, run_at, now, order)
  local tk = tkey(id)
  redis.call('HDEL', tk, 'w')
  if run_at <= now then
    redis.call('HSET', tk, 's', 'pending')
    redis.call('ZADD', qkey(q, 'pending'), order, id)
    wake[q] = true
  else
    redis.call('HSET', tk, 's', 'scheduled')
    redis.call('ZADD', qkey(q, 'scheduled'), run_at, id)
  end
end

local function reclaim_queue(q, now, nows, max_lost, limit)
  local lk = qkey(q, 'leases')
  local ids = redis.call('ZRANGEBYSCORE', lk, '-inf', nows, 'LIMIT', 0, limit)
  local n = 0
  for _, id in ipairs(ids) do
    redis.call('ZREM', lk, id)
    local tk = tkey(id)
    local f = redis.call('HMGET', tk, 's', 'd', 'l', 'n', 'm', 'c', 'u', 'o')
    if f[1] == 'leased' and tonumber(f[2]) <= now then
      n = n + 1
      local lost = tonumber(f[3] or '0') + 1
      redis.call('HSET', tk, 'l', lost, 'err', 'worker lost')
      local uk = f[7] or nil
      if f[6] then
        to_dead(id, q, uk, 'cancelled: ' .. f[6] .. ' (worker lost)')
      elseif lost >= max_lost then
        to_dead(id, q, uk, 'worker lost ' .. lost .. ' times')
      elseif tonumber(f[4]) >= tonumber(f[5]) then
        to_dead(id, q, uk, 'worker lost on the last attempt (' .. f[4] .. ')')
      else
        redis.call('HSET', tk, 'r', nows)
        make_ready(id, q, now, now, tonumber(f[8]))
      end
    end
  end
  if n > 0 then redis.call('HINCRBY', qkey(q, 'stats'), 'reclaimed', n) end
  return n
end

-- "" when nothing is due later (or paused), else the earliest of the first scheduled
-- run_at and the first lease deadline
local function next_due(q)
  if redis.call('EXISTS', qkey(q, 'paused')) == 1 then return '' end
  if redis.call('ZCARD', qkey(q, 'pending')) > 0 then return '0' end  -- due now
  local best = nil
  for _, s in ipairs({'scheduled', 'leases'}) do
    local first = redis.call('ZRANGE', qkey(q, s), 0, 0, 'WITHSCORES')
    if first[2] then
      local v = tonumber(first[2])
      if best == nil or v < best then best = v end
    end
  end
  if best == nil then return '' end
  return fmt(best)
end

-- one task leased by a handoff, as the consumer's inbox holds it: a header line of
-- numbers and lengths, then queue, id, owner, headers and args back to back (args
-- last, so they may hold any bytes)
local function handoff_item(q, id, args, attempt, max_attempts, priority, run_at, enq,
                            headers, tok, owner, deadline, left)
  return table.concat({tok, deadline, attempt, max_attempts, priority, run_at, enq,
    #q, #id, #owner, #headers, left}, ' ') .. '\n' .. q .. id .. owner .. headers .. args
end

local function waiter_add(q, waiter, expiry, room)
  redis.call('ZADD', qkey(q, 'waiters'), expiry, waiter)
  redis.call('HSET', qkey(q, 'room'), waiter, room)
end

local function waiter_del(q, waiter)
  redis.call('ZREM', qkey(q, 'waiters'), waiter)
  redis.call('HDEL', qkey(q, 'room'), waiter)
end

local function waiters_expire(q, nows)
  for _, w in ipairs(redis.call('ZRANGEBYSCORE', qkey(q, 'waiters'), '-inf', nows)) do
    waiter_del(q, w)
  end
end

local function promote(q, nows)
  local sk = qkey(q, 'scheduled')
  local ids = redis.call('ZRANGEBYSCORE', sk, '-inf', nows, 'LIMIT', 0, 1000)
  if #ids == 0 then return end
  local pk = qkey(q, 'pending')
  for _, id in ipairs(ids) do
    redis.call('ZREM', sk, id)
    local tk = tkey(id)
    redis.call('HSET', tk, 's', 'pending')
    redis.call('ZADD', pk, redis.call('HGET', tk, 'o'), id)
  end
end
"""


def _with_prelude(body: str) -> str:
    """``body`` after the definitions of PRELUDE it uses (directly or through another):
    Lua creates every local function of a script on each call, about 1 us apiece."""
    keep: list[str] = []
    used = body
    for names, chunk in reversed(_DEFINITIONS):
        if any(re.search(rf"\b{name}\b", used) for name in names):
            keep.append(chunk)
            used += chunk
    return "".join(reversed(keep)) + body


# PRELUDE's paragraphs, in order, with the names each defines: a paragraph uses only
# names defined before it.
_DEFINITIONS = [
    (re.findall(r"^local (?:function )?(\w+)", chunk, re.MULTILINE), chunk + "\n")
    for chunk in PRELUDE.strip("\n").split("\n\n")
]

# ARGV: P, now, then 10 per job: id, queue, args, priority, max_attempts, headers,
# unique ("" or "k:<key>"), run_at, order, due ("1" pending, "0" scheduled).
# Returns the ids (an existing live task's id for a taken unique key). A retried push
# (same ids) is a no-op: pushes are idempotent.
PUSH = _with_prelude(
    r"""
local now = ARGV[2]
local nowf = tonumber(now)
local out = {}
local seen = {}
-- per queue: false once no handoff can happen in this call (no live waiter, or a task
-- went to pending, which the later ones must not overtake)
local takers = {}
local function take_waiter(q)
  if takers[q] == false then return nil end
  local wk = qkey(q, 'waiters')
  local first = redis.call('ZRANGE', wk, 0, 0, 'WITHSCORES')  -- the oldest registration
  if #first == 0 or redis.call('EXISTS', qkey(q, 'paused')) == 1
    or redis.call('ZCARD', qkey(q, 'pending')) > 0
    or #redis.call('ZRANGEBYSCORE', qkey(q, 'scheduled'), '-inf', now, 'LIMIT', 0, 1) > 0
    or #redis.call('ZRANGEBYSCORE', qkey(q, 'leases'), '-inf', now, 'LIMIT', 0, 1) > 0 then
    takers[q] = false
    return nil
  end
  if tonumber(first[2]) <= nowf then  -- expired registrations (dead processes) go
    waiters_expire(q, now)
    first = redis.call('ZRANGE', wk, 0, 0)
  end
  local w = first[1]
  if not w then
    takers[q] = false
    return nil
  end
  local left = redis.call('HINCRBY', qkey(q, 'room'), w, -1)
  if left <= 0 then waiter_del(q, w) end  -- full: its registration goes
  return w, left
end
for i = 3, #ARGV, 10 do
  local id, q, uk = ARGV[i], ARGV[i + 1], ARGV[i + 6]
  local taken = nil
  if uk ~= '' then
    uk = string.sub(uk, 3)
    local k = P .. 'u:' .. uk
    taken = redis.call('GET', k)
    if not taken then redis.call('SET', k, id) end
  end
  if taken then
    out[#out + 1] = taken
  else
    out[#out + 1] = id
    local tk = tkey(id)
    if redis.call('EXISTS', tk) == 0 then
      local due = ARGV[i + 9] == '1'
      if not seen[q] then
        seen[q] = true
        redis.call('SADD', P .. 'queues', q)
      end
      local waiter, left = nil, 0
      if due then waiter, left = take_waiter(q) end
      if waiter then
        local s1 = string.find(waiter, ' ', 1, true)
        local s2 = string.find(waiter, ' ', s1 + 1, true)
        local owner = string.sub(waiter, s2 + 1)
        local deadline = fmt(nowf + tonumber(string.sub(waiter, s1 + 1, s2 - 1)))
        local tok = redis.call('INCR', P .. 'token')
        redis.call('HSET', tk, 'q', q, 'a', ARGV[i + 2], 'p', ARGV[i + 3], 'm', ARGV[i + 4],
          'h', ARGV[i + 5], 'e', now, 'r', ARGV[i + 7], 'o', ARGV[i + 8], 'n', 1, 't', tok,
          'l', 0, 's', 'leased', 'w', owner, 'd', deadline)
        if uk ~= '' then redis.call('HSET', tk, 'u', uk) end
        redis.call('ZADD', qkey(q, 'leases'), deadline, id)
        local ik = P .. 'i:' .. string.sub(waiter, 1, s1 - 1)
        redis.call('RPUSH', ik, handoff_item(q, id, ARGV[i + 2], 1, ARGV[i + 4], ARGV[i + 3],
          ARGV[i + 7], now, ARGV[i + 5], tok, owner, deadline, math.max(left, 0)))
        redis.call('PEXPIRE', ik, 600000)
      else
        redis.call('HSET', tk, 'q', q, 'a', ARGV[i + 2], 'p', ARGV[i + 3], 'm', ARGV[i + 4],
          'h', ARGV[i + 5], 'e', now, 'r', ARGV[i + 7], 'o', ARGV[i + 8], 'n', 0, 't', 0,
          'l', 0, 's', due and 'pending' or 'scheduled')
        if uk ~= '' then redis.call('HSET', tk, 'u', uk) end
        if due then
          takers[q] = false
          redis.call('ZADD', qkey(q, 'pending'), ARGV[i + 8], id)
        else
          redis.call('ZADD', qkey(q, 'scheduled'), ARGV[i + 7], id)
        end
        wake[q] = true
      end
    end
  end
end
publish()
return out
"""
)

# ARGV: P, queue, owner, limit, now, deadline, max_lost, nonce, waiter, waiter expiry,
# room cap, room floor (free slots the caller's earlier short claims found, used when
# this one leases nothing).
# ``waiter`` ("" none) is the caller's handoff registration for the queue: a full claim
# removes it (the caller is busy), a short one renews it (the caller goes idle) and then
# ends with one more value, "1" (registered) or "0" (not: paused). Reclaims expired
# leases, promotes due scheduled tasks, then leases up to ``limit`` tasks in order.
# Returns 9 values per task: id, args, attempt, max_attempts, priority, run_at,
# enqueued_at, headers, token; when it leases fewer than ``limit`` (a short claim), one
# more value follows: NEXT_DUE's answer ("" or the next due time), so the caller can
# go idle without another round trip. The call's leases are remembered under its nonce
# for a minute: a call retried after a lost reply gets the same tasks back (those still
# leased to it, without the trailing value) instead of leaving them leased to nobody.
_CLAIM_BODY = r"""
local q, owner, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local nows, deadline = ARGV[5], ARGV[6]
local now = tonumber(nows)
local ck = P .. 'c:' .. ARGV[8]
local function row(out, id, tok)
  local f = redis.call('HMGET', tkey(id), 'a', 'n', 'm', 'p', 'r', 'e', 'h')
  out[#out + 1] = id
  for j = 1, 7 do out[#out + 1] = f[j] end
  out[#out + 1] = tok
end
local before = redis.call('LRANGE', ck, 0, -1)
if #before > 0 then
  local out = {}
  for j = 1, #before, 2 do
    local id, tok = before[j], before[j + 1]
    local f = redis.call('HMGET', tkey(id), 's', 't')
    if f[1] == 'leased' and f[2] == tok then row(out, id, tonumber(tok)) end
  end
  return out
end
reclaim_queue(q, now, nows, tonumber(ARGV[7]), 1000)
promote(q, nows)
publish()
local waiter = ARGV[9]
if redis.call('EXISTS', qkey(q, 'paused')) == 1 then
  if waiter ~= '' then
    waiter_del(q, waiter)
    return {'', '0'}
  end
  return {''}
end
local pk, lk = qkey(q, 'pending'), qkey(q, 'leases')
local popped = {}
if limit > 0 then popped = redis.call('ZPOPMIN', pk, limit) end  -- id, order, ...
local n = #popped / 2
local out = {}
if n > 0 then
  -- one block of n tokens (what n INCRs would give), and the leases and the claim
  -- log written in bulk: 3 calls per task instead of 8
  local first = redis.call('INCRBY', P .. 'token', n) - n
  local leases, log = {}, {}
  for j = 1, n do
    local id, tok = popped[2 * j - 1], first + j
    local tk = tkey(id)
    local f = redis.call('HMGET', tk, 'a', 'n', 'm', 'p', 'r', 'e', 'h')
    local attempt = tonumber(f[2]) + 1
    -- ``st`` (an earlier lease's settle) stays: it names its own token, so it matches
    -- only a retry of that very settle call, which did succeed
    redis.call('HSET', tk, 'n', attempt, 's', 'leased', 't', tok, 'w', owner, 'd', deadline)
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = attempt
    for k = 3, 7 do out[#out + 1] = f[k] end
    out[#out + 1] = tok
    leases[#leases + 1] = deadline
    leases[#leases + 1] = id
    log[#log + 1] = id
    log[#log + 1] = tok
  end
  for j = 1, #leases, 2000 do
    redis.call('ZADD', lk, unpack(leases, j, math.min(j + 1999, #leases)))
    redis.call('RPUSH', ck, unpack(log, j, math.min(j + 1999, #log)))
  end
  redis.call('PEXPIRE', ck, 60000)
end
if n < limit then
  out[#out + 1] = next_due(q)
  if waiter ~= '' then
    -- room: the slots this claim left free (capped: what a crash can strand)
    local free = limit - n
    if n == 0 then free = math.max(free, tonumber(ARGV[12])) end
    waiter_add(q, waiter, ARGV[10], math.min(free, tonumber(ARGV[11])))
    out[#out + 1] = '1'
  end
elseif waiter ~= '' then
  waiter_del(q, waiter)
end
return out
"""
CLAIM = _with_prelude(_CLAIM_BODY)

# ARGV: P, queue, now, waiter, expiry, previous waiter ("" none), room (tasks it can
# take). Registers ``waiter`` for a handoff unless work is due already (or the queue is
# paused), atomically with
# that check: a push after it either hands its task over or wakes the stream. Returns
# NEXT_DUE's answer and 1 when registered, 0 when not.
REGISTER = _with_prelude(
    r"""
local q, nows, waiter, old = ARGV[2], ARGV[3], ARGV[4], ARGV[6]
if old ~= '' then waiter_del(q, old) end
local due = next_due(q)
local paused = redis.call('EXISTS', qkey(q, 'paused')) == 1
if paused or (due ~= '' and tonumber(due) <= tonumber(nows)) then
  waiter_del(q, waiter)
  return {due, 0}
end
waiters_expire(q, nows)
waiter_add(q, waiter, ARGV[5], ARGV[7])
return {due, 1}
"""
)

# ARGV: P, inbox, then pairs queue, waiter. Removes the registrations and empties the
# inbox; returns what it held (``handoff_item`` strings), for the caller to release.
DRAIN = _with_prelude(
    r"""
for i = 3, #ARGV, 2 do waiter_del(ARGV[i], ARGV[i + 1]) end
local ik = P .. 'i:' .. ARGV[2]
local items = redis.call('LRANGE', ik, 0, -1)
redis.call('DEL', ik)
return items
"""
)

# ARGV: P, queue, waiter. Removes one registration (a waiter that stopped waiting).
UNREGISTER = _with_prelude(
    r"""
waiter_del(ARGV[2], ARGV[3])
return 1
"""
)

# ARGV: P, now, result_ttl ("" none), keep_ms ("" forever), aging, call nonce,
# forget ("" never: seconds after an ack a done task is forgotten, on the backend's
# clock), then 5 per op: kind (A ack, R retry, D dead, L release), id, token, x1, x2.
#   A: x1 = "1" when x2 is the result;  R: x1 = run_at, x2 = error;  D: x1 = reason.
# Returns one string per op: "" when done, else why the lease was refused. The nonce
# (unique per call, kept when the call is retried after a lost reply) makes a retried
# call see its own earlier outcome, while a second settle with the same token is refused.
_SETTLE_BODY = r"""
local nows, ttl, keep, aging, nonce = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
local forget = ARGV[7]
local now = tonumber(nows)
local out = {}
-- per queue, written once at the end: leases to drop, done tasks to count (id, score)
local unleased, done = {}, {}
local function add(t, q, ...)
  local list = t[q]
  if not list then list = {}; t[q] = list end
  for _, v in ipairs({...}) do list[#list + 1] = v end
end
for i = 8, #ARGV, 5 do
  local kind, id, tok = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 't', 'd', 'q', 'st', 'c', 'u', 'p', 'r', 'o')
  local err = ''
  if not f[1] then
    err = 'task ' .. id .. ' is unknown to this backend'
  elseif f[5] == nonce .. ':' .. tok then
    err = ''  -- this very call was applied before its reply was lost: same outcome
  elseif f[1] ~= 'leased' or f[2] ~= tok then
    err = 'task ' .. id .. ': lease token ' .. tok .. ' is stale (task is ' .. f[1]
      .. ', current token ' .. f[2] .. ')'
  elseif tonumber(f[3]) <= now then
    err = 'task ' .. id .. ': lease expired at ' .. string.format('%.3f', tonumber(f[3]))
  else
    local q, uk = f[4], f[7] or nil
    add(unleased, q, id)
    local stamp = nonce .. ':' .. tok
    if kind == 'A' then
      -- what finish() does, with the result, in one HSET and one HDEL: the hot path
      local set, del = {'st', stamp, 's', 'done', 'fa', nows}, {'w', 'c'}
      if ARGV[i + 3] == '1' then
        set[7], set[8] = 'res', ARGV[i + 4]
        if ttl ~= '' then set[9], set[10] = 'rx', fmt(now + tonumber(ttl)) else del[3] = 'rx' end
      else
        del[3], del[4] = 'res', 'rx'
      end
      redis.call('HSET', tk, unpack(set))
      redis.call('HDEL', tk, unpack(del))
      unique_release(id, uk)
      -- the done count is a gauge: a task leaves it when it is forgotten (kept done_ttl,
      -- or as long as its result); the record itself expires in Redis a little later
      local forgotten = '+inf'
      if forget ~= '' then
        local at = now + tonumber(forget)
        if ARGV[i + 3] == '1' and ttl ~= '' then at = math.max(at, now + tonumber(ttl)) end
        forgotten = fmt(at)
      end
      add(done, q, forgotten, id)
      if keep ~= '' then redis.call('PEXPIRE', tk, keep) end
    else
      redis.call('HSET', tk, 'st', stamp)
      if kind == 'D' then
        to_dead(id, q, uk, ARGV[i + 3])
      elseif kind == 'R' then
        redis.call('HSET', tk, 'err', ARGV[i + 4])
        if f[6] then
          to_dead(id, q, uk, 'cancelled: ' .. f[6])
        else
          local run_at = tonumber(ARGV[i + 3])
          redis.call('HSET', tk, 'r', ARGV[i + 3], 'o', fmt(run_at - tonumber(f[8]) * aging))
          make_ready(id, q, run_at, now, run_at - tonumber(f[8]) * aging)
        end
      else
        redis.call('HINCRBY', tk, 'n', -1)
        if f[6] then
          to_dead(id, q, uk, 'cancelled: ' .. f[6])
        else
          make_ready(id, q, tonumber(f[9]), now, tonumber(f[10]))
        end
      end
    end
  end
  out[#out + 1] = err
end
for q, ids in pairs(unleased) do
  for j = 1, #ids, 4000 do
    redis.call('ZREM', qkey(q, 'leases'), unpack(ids, j, math.min(j + 3999, #ids)))
  end
end
for q, pairs_ in pairs(done) do
  local dk = qkey(q, 'done')
  for j = 1, #pairs_, 4000 do
    redis.call('ZADD', dk, unpack(pairs_, j, math.min(j + 3999, #pairs_)))
  end
  redis.call('ZREMRANGEBYSCORE', dk, '-inf', nows)  -- drop the forgotten ones
end
publish()
return out
"""
SETTLE = _with_prelude(_SETTLE_BODY)

# ARGV: P, now, deadline, then pairs id, token. Returns 1 renewed, 0 lost, 2 cancel
# requested, per lease.
RENEW = _with_prelude(
    r"""
local now, deadline = tonumber(ARGV[2]), ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local id, tok = ARGV[i], ARGV[i + 1]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 't', 'd', 'q', 'c')
  if f[1] == 'leased' and f[2] == tok and tonumber(f[3]) > now then
    redis.call('HSET', tk, 'd', deadline)
    redis.call('ZADD', qkey(f[4], 'leases'), deadline, id)
    out[#out + 1] = f[5] and 2 or 1
  else
    out[#out + 1] = 0
  end
end
return out
"""
)

# ARGV: P, id, reason. Returns 1 when cancelled or cancel-requested, 0 otherwise.
CANCEL = _with_prelude(
    r"""
local id, reason = ARGV[2], ARGV[3]
local tk = tkey(id)
local f = redis.call('HMGET', tk, 's', 'q', 'u')
if not f[1] or f[1] == 'done' or f[1] == 'dead' then return 0 end
if f[1] == 'leased' then
  redis.call('HSET', tk, 'c', reason)
  return 1
end
redis.call('ZREM', qkey(f[2], 'pending'), id)
redis.call('ZREM', qkey(f[2], 'scheduled'), id)
to_dead(id, f[2], f[3] or nil, 'cancelled: ' .. reason)
return 1
"""
)

# ARGV: P, now, max_lost. Reclaims expired leases of every queue; returns how many.
RECLAIM = _with_prelude(
    r"""
local nows = ARGV[2]
local n = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  n = n + reclaim_queue(q, tonumber(nows), nows, tonumber(ARGV[3]), 10000)
end
publish()
return n
"""
)

# ARGV: P, now, run_at, aging, ids... Returns the ids replayed.
REPLAY = _with_prelude(
    r"""
local now, run_at_s, aging = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local run_at = tonumber(run_at_s)
local out = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local tk = tkey(id)
  local f = redis.call('HMGET', tk, 's', 'q', 'u', 'p')
  if f[1] == 'dead' then
    local q = f[2]
    redis.call('ZREM', qkey(q, 'dead'), id)
    redis.call('HSET', tk, 'n', 0, 'l', 0, 'r', run_at_s,
      'o', fmt(run_at - tonumber(f[4]) * aging))
    redis.call('HDEL', tk, 'dr', 'st')
    if f[3] then
      if not redis.call('SET', P .. 'u:' .. f[3], id, 'NX') then redis.call('HDEL', tk, 'u') end
    end
    make_ready(id, q, run_at, now, run_at - tonumber(f[4]) * aging)
    out[#out + 1] = id
  end
end
publish()
return out
"""
)

# ARGV: P, now. Returns 8 values per queue: name, pending, scheduled, leased, done (the
# done tasks not yet forgotten), dead, paused, reclaimed.
STATS = _with_prelude(
    r"""
local out = {}
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  local c = redis.call('HMGET', qkey(q, 'stats'), 'reclaimed')
  redis.call('ZREMRANGEBYSCORE', qkey(q, 'done'), '-inf', ARGV[2])  -- forgotten by now
  out[#out + 1] = q
  out[#out + 1] = redis.call('ZCARD', qkey(q, 'pending'))
  out[#out + 1] = redis.call('ZCARD', qkey(q, 'scheduled'))
  out[#out + 1] = redis.call('ZCARD', qkey(q, 'leases'))
  out[#out + 1] = redis.call('ZCARD', qkey(q, 'done'))
  out[#out + 1] = redis.call('ZCARD', qkey(q, 'dead'))
  out[#out + 1] = redis.call('EXISTS', qkey(q, 'paused'))
  out[#out + 1] = tonumber(c[1] or '0')
end
return out
"""
)

# ARGV: P, now. Drops the done tasks forgotten by now from every queue's done count;
# returns how many.
PRUNE = _with_prelude(
    r"""
local n = 0
for _, q in ipairs(redis.call('SMEMBERS', P .. 'queues')) do
  n = n + redis.call('ZREMRANGEBYSCORE', qkey(q, 'done'), '-inf', ARGV[2])
end
return n
"""
)

# ARGV: P, queue. Returns "" when nothing is due later (or paused), else the earliest
# of the first scheduled run_at and the first lease deadline.
NEXT_DUE = _with_prelude(
    r"""
return next_due(ARGV[2])
"""
)

# ARGV: P, queue, limit. Returns id then HGETALL pairs (flattened, length-prefixed).
DEAD_LETTERS = _with_prelude(
    r"""
local ids = redis.call('ZRANGE', qkey(ARGV[2], 'dead'), 0, tonumber(ARGV[3]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local h = redis.call('HGETALL', tkey(id))
  out[#out + 1] = id
  out[#out + 1] = #h
  for j = 1, #h do out[#out + 1] = h[j] end
end
return out
"""
)


# ARGV: P, the CLAIM call's arguments (2-12), then the SETTLE call's from its second on
# (its header and its ops; P is shared). Stores the acks that rode on this claim
# (``turret.backends._riding``), then claims: one script call for both. Returns two
# arrays: SETTLE's answer, then CLAIM's. Each half keeps its own nonce, so a call
# retried after a lost reply gives both halves' first outcomes again.
SETTLE_CLAIM = _with_prelude(
    "local function settle_part(ARGV)\n"
    + _SETTLE_BODY
    + "\nend\nlocal function claim_part(ARGV)\n"
    + _CLAIM_BODY
    + r"""
end
local cargv, sargv = {}, {ARGV[1]}
for i = 1, 12 do cargv[i] = ARGV[i] end
for i = 13, #ARGV do sargv[#sargv + 1] = ARGV[i] end
local settled = settle_part(sargv)
return {settled, claim_part(cargv)}
"""
)
