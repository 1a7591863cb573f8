"""The shared backend of several replicas: journal and limit state in Redis.

Every check-and-change is one short Lua script (the model is redis-py's `Lock`: a
token per holder, checked by the script that changes what it guards), so replicas
racing on one occurrence or one target cannot both pass a guard. Every key expires.

    {P}:journal                 stream of acknowledged requests; consumer group `engine`
    {P}:journal:alerts          alerts journaled and not yet decided (the 503 bound)
    {P}:occ:RULE␀FP␀STARTS      hash: status, at, owner, token (fencing), rem (a
                                remediation owns it), res and rtarget (the lock token
                                and target its attempt reserved), act (its row, or
                                `started`), cn (the nonce of the claim that set it:
                                a claim sent again answers the same); status `retry`:
                                a failed decision's claim, let go of with its
                                reservation for the next claim to inherit
    {P}:last:TARGET             last attempt on a target (cooldown)
    {P}:att:RULE␀TARGET         zset of attempts in the rule's window
    {P}:ract:RULE, {P}:rtargets:RULE   a rule's actions in its window; its targets
    {P}:budget, {P}:btargets    global budgets: actions, distinct targets per window
    {P}:circ:RULE␀TARGET        hash: failures, opened_at, trial; {P}:circopen (zset)
    {P}:lock:TARGET             the target lock: its fencing token, PX lock_ttl
    {P}:esc                     escalations sent in the window
    {P}:pauses                  hash: key → pause JSON
    {P}:live:REPLICA            a replica's lease (PX claim_idle, renewed while it runs)
    {P}:replicas                zset of replicas that may own records
    {P}:held:REPLICA, {P}:rem:REPLICA   hash: key → "TOKEN|record JSON" (held alerts,
                                remediations under way), owned by that replica
    {P}:resolved:OCCURRENCE     a resolve seen by any replica (and published)
    {P}:answer:REQUEST          the reply of the replica holding an approval to an
                                answer handed to it on `{P}:answers` (PX 60 s)
    {P}:fence                   the fencing token counter

All keys share the hash tag `{P}`, so the scripts also work on a Redis Cluster (on one
slot). Held alerts and remediations keep their timers in the replica that owns them
(the engine's in-process timers, as embedded); when a replica's lease lapses another
takes its records over atomically (`adopt`), with fresh fencing tokens, and arms them:
whatever the stalled replica does after it wakes is refused by the token it still holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import json
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import structlog

from remediator import errors
from remediator.backends.journal import Also, JournalEntry, Replay
from remediator.backends.sqlite import Database
from remediator.backends.state import GLOBAL, Claim, Mark, Pause
from remediator.clients.redis import Redis, Unsent
from remediator.engine import guards
from remediator.engine.guards import Circuit, Verdict
from remediator.models.alert import Alert, iso, parse_time
from remediator.models.decision import Reason
from remediator.models.rule import Rule
from remediator.settings import Budgets, RedisBackend

log = structlog.get_logger(__name__)
T = TypeVar("T")

GROUP = "engine"
OCCURRENCE_TTL = 7 * 86400.0
"""Seconds an occurrence is remembered after its last delivery (a re-send renews it)."""
RESOLVED_TTL = 86400.0
RECORDS_TTL = 30 * 86400.0
"""A replica's held/remediation hashes outlive it this long at most (adopted long before)."""
READ_COUNT = 100
"""Stream entries read (or claimed) per call."""
IDLE_POLL = 0.01
"""Seconds between reads of an idle stream (an append by this replica reads at once)."""
SPOOL_RETRY_SECONDS = 30.0
"""How long an audit write Redis refused or did not answer is tried again."""
RESTART_GRACE = 5.0
"""Seconds a Redis restart is waited out by an action's lock check and its circuit's
count (the calls between a started action and its outcome), before they give up."""
SPOOL_PUSH_MEMORY = 600
"""Seconds Redis remembers a push's ids, so that its retries are not appended again."""
KEEP_RETRIES = 5
"""Times an alert whose decision failed is handed to the engine again (once Redis
answers, at most every `poll_interval`) before it is left for the next start."""
LOCAL_LIMIT = 2000
"""Alerts this replica takes from the stream and has not finished: the rest wait there
for whichever replica has room (bounded memory per replica)."""
HAND_WAIT = 2.0
"""Seconds an answer to an approval held elsewhere waits for its holder to say it holds
it (on `{P}:answers`): none in time, and no replica holds it."""
HAND_RESULT_WAIT = 15.0
"""Seconds it then waits for what came of it (the holder's `decide_approval`)."""
HAND_POLL = 0.02
"""Seconds between reads of the reply key (no blocking read: see RedisJournal.run)."""
REPLY_TTL = 60.0
"""Seconds a reply key outlives its last write (the asker has long stopped reading)."""


async def persistence(client: Redis) -> str | None:
    """What Redis's persistence lets a 2xx survive, when it is less than the documented
    `appendonly yes` + `appendfsync always` (README, "What a 2xx guarantees"); None when
    it is that. `CONFIG` refused (a managed Redis renames it) is said too: unknown."""
    try:
        appendonly = await client.call("CONFIG", "GET", "appendonly")
        appendfsync = await client.call("CONFIG", "GET", "appendfsync")
    except errors.BackendUnavailable as exc:
        return f"unknown (CONFIG GET refused: {exc}); check appendonly and appendfsync by hand"
    only = _config_value(appendonly)
    fsync = _config_value(appendfsync)
    if only == "yes" and fsync == "always":
        return None
    if only != "yes":
        return (
            f"appendonly {only or '?'}: a restart of Redis loses every alert acknowledged "
            "since its last snapshot"
        )
    return (
        f"appendfsync {fsync or '?'}: a crash of the Redis node loses up to a second of "
        "acknowledged alerts"
    )


def _config_value(answer: Any) -> str:
    """The value of a one-key `CONFIG GET` answer (a flat list or a map, by protocol)."""
    if isinstance(answer, dict):
        values = list(answer.values())
    elif isinstance(answer, list | tuple):
        values = list(answer[1::2])
    else:
        values = []
    if not values:
        return ""
    v = values[0]
    return (v.decode() if isinstance(v, bytes) else str(v)).lower()


def new_replica_id() -> str:
    """Host (the pod's name), process and a random part: unique per process start."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- scripts

_CLAIM = """
local h = redis.call('HMGET', KEYS[1], 'status', 'owner', 'token', 'rem', 'res', 'act',
  'rtarget', 'cn')
local status, owner, token, rem, res, act, rtarget = h[1], h[2], h[3], h[4], h[5], h[6], h[7]
if status == 'deciding' and h[8] == ARGV[9] and owner == ARGV[4] then
  -- this very claim again (its answer was lost): the same answer, nothing changed
  local again = 0
  if act and act ~= 'started' then again = act end
  if not res then rtarget = nil end
  return {1, '', token, res or 0, again, rtarget or ''}
end
local decide = false
local function dead()
  return owner and owner ~= ARGV[4] and redis.call('EXISTS', ARGV[7] .. 'live:' .. owner) == 0
end
local row = 0
if rem == '1' then
  decide = false
elseif not status then
  decide = true
elseif status == 'held' then
  decide = ARGV[2] == '1' and (ARGV[6] == '0' or token == ARGV[6])
elseif status == 'deciding' or status == 'retry' then
  -- another replica's claim: stale once that replica's lease is gone (it died), or let
  -- go of with its reservation by a decision that failed (`retry`)
  decide = status == 'retry' or dead()
  if decide and act and act ~= 'started' then row = act end
elseif (status == 'failed/interrupted' or status == 'awaiting_approval/') and act
    and act ~= 'started' then
  -- a dead replica wrote the action's (or approval request's) row and died before it
  -- kept a remediation record (so before the action ran, or anyone was asked): taken
  -- over, that row used again
  decide = dead()
  if decide then row = act end
else
  local slash = string.find(status, '/', 1, true)
  if slash and string.sub(status, 1, slash - 1) == 'skipped' then
    local reason = string.sub(status, slash + 1)
    if string.find(ARGV[8], ',' .. reason .. ',', 1, true) then
      decide = ARGV[1] == '' or ARGV[1] ~= reason
    end
  end
end
if not decide then
  if status then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
  return {0, status or ''}
end
local t = redis.call('INCR', ARGV[7] .. 'fence')
redis.call('HSET', KEYS[1], 'status', 'deciding', 'at', ARGV[3], 'owner', ARGV[4], 'token', t,
  'cn', ARGV[9])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if status ~= 'deciding' and status ~= 'retry' and row == 0 then
  res = nil  -- an earlier decision's reservation, not one of a claim cut off
  redis.call('HDEL', KEYS[1], 'res', 'rtarget', 'act')
end
if not res then rtarget = nil end
return {1, status or '', t, res or 0, row, rtarget or ''}
"""

# Fenced (a token): refused unless the occurrence is still claimed under it — also when
# it is gone (forgotten, expired), so a stale writer never recreates it without an owner.
_SET_OCCURRENCE = """
if ARGV[3] ~= '0' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[3] then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Conditional (ARGV[2] = 1: a row given up on may not have reached the spool): only a
# claim still `deciding` and owned by no remediation (whose next attempt decides with
# `deciding` too, and whose record is the durable state) is let go of.
# A failed decision's claim (unconditional: the decision never started its action) that
# had reserved its target (`res`: a reply that timed out hides whether the reservation
# was made) is not deleted but left `retry`, without owner or token: the next claim
# decides it and inherits that reservation (and the action's row, if written), instead
# of finding the target locked, cooled down and counted by an attempt that never ran.
# Unconditional, with KEYS[2] (this replica's remediation records) and ARGV[4] (the
# occurrence key): a remediation record the failed decision kept under its token goes
# too (the decision begins none it does not own, so one under its token is its own).
# A remediation record under another token is not this claim's to drop: refused.
_FORGET_OCCURRENCE = """
if ARGV[1] ~= '0' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if ARGV[3] and ARGV[3] ~= '' and redis.call('HGET', KEYS[1], 'cn') ~= ARGV[3] then
  return 0
end
local h = redis.call('HMGET', KEYS[1], 'status', 'rem', 'res', 'act')
if ARGV[2] == '1' then
  if h[1] ~= 'deciding' then return 0 end
  if h[2] then return 0 end
end
local rem = h[2]
if rem and KEYS[2] and ARGV[1] ~= '0' then
  local v = redis.call('HGET', KEYS[2], ARGV[4])
  if v and string.sub(v, 1, #ARGV[1] + 1) ~= ARGV[1] .. '|' then return 0 end
  if v then redis.call('HDEL', KEYS[2], ARGV[4]) end
  redis.call('HDEL', KEYS[1], 'rem')
  rem = false
end
if rem then return 0 end
if h[3] and h[4] ~= 'started' then
  redis.call('HSET', KEYS[1], 'status', 'retry')
  redis.call('HDEL', KEYS[1], 'owner', 'token')
  return 1
end
redis.call('DEL', KEYS[1])
return 1
"""

_RESERVE = """
local now = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[1])
if last and now - tonumber(last) < tonumber(ARGV[2]) then return {'cooldown', last} end
local since = now - tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', since)
local n = redis.call('ZCARD', KEYS[2])
if n >= tonumber(ARGV[4]) then return {'max_attempts', n} end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', since)
local ra = redis.call('ZCARD', KEYS[3])
if tonumber(ARGV[5]) >= 0 and ra >= tonumber(ARGV[5]) then return {'rate_limited', ra} end
local bsince = now - tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', bsince)
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', bsince)
local ba = redis.call('ZCARD', KEYS[4])
if ba >= tonumber(ARGV[7]) then return {'budget_actions', ba} end
local bt = redis.call('ZCARD', KEYS[5])
if not redis.call('ZSCORE', KEYS[5], ARGV[13]) and bt >= tonumber(ARGV[8]) then
  return {'budget_targets', bt}
end
local c = redis.call('HMGET', KEYS[6], 'failures', 'opened_at', 'trial')
local opened = nil
if c[2] and c[2] ~= '' then opened = tonumber(c[2]) end
if opened and (c[3] == '1' or now - opened < tonumber(ARGV[9])) then
  return {'circuit_open', c[1] or '0', c[2], c[3] or '0'}
end
if redis.call('EXISTS', KEYS[7]) == 1 then return {'locked'} end
if opened and ARGV[10] ~= '1' then redis.call('HSET', KEYS[6], 'trial', '1') end
local ex = ARGV[12]
redis.call('SET', KEYS[1], ARGV[1], 'PX', ex)
local seq = redis.call('INCR', KEYS[8])
redis.call('ZADD', KEYS[2], now, seq)
redis.call('PEXPIRE', KEYS[2], ex)
redis.call('ZADD', KEYS[3], now, seq)
redis.call('PEXPIRE', KEYS[3], ex)
if ARGV[15] ~= '1' then
  redis.call('ZADD', KEYS[4], now, seq .. ' ' .. ARGV[13])
  redis.call('PEXPIRE', KEYS[4], ARGV[14])
  redis.call('ZADD', KEYS[5], now, ARGV[13])
  redis.call('PEXPIRE', KEYS[5], ARGV[14])
end
redis.call('ZADD', KEYS[9], now, ARGV[13])
redis.call('PEXPIRE', KEYS[9], ex)
if redis.call('EXISTS', KEYS[6]) == 1 then redis.call('PEXPIRE', KEYS[6], ex) end
local token = 0
if ARGV[10] ~= '1' then
  token = seq
  redis.call('SET', KEYS[7], token, 'PX', ARGV[11])
  -- on the occurrence claimed: a replica taking the claim over inherits the reservation
  if KEYS[10] and redis.call('HGET', KEYS[10], 'token') == ARGV[16] then
    redis.call('HSET', KEYS[10], 'res', token, 'rtarget', ARGV[13])
  end
end
return {'ok', n + 1, token}
"""

_TAKE_LOCK = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return 0 end
local t = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], t, 'PX', ARGV[2])
if KEYS[3] and redis.call('HGET', KEYS[3], 'token') == ARGV[3] then
  redis.call('HSET', KEYS[3], 'res', t, 'rtarget', ARGV[4])
end
return t
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_RENEW_LOCKS = """
local kept = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[i + 1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[1])
    kept = kept + 1
  end
end
return kept
"""

_RECORD_RESULT = """
if ARGV[1] == '1' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[6])
  return 0
end
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if f >= tonumber(ARGV[3]) then
  local now = tonumber(ARGV[2])
  local o = redis.call('HGET', KEYS[1], 'opened_at')
  local was = o and o ~= '' and now - tonumber(o) < tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[2], 'trial', '0')
  redis.call('ZADD', KEYS[2], now, ARGV[6])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
  if was then return 0 end
  return 1
end
return 0
"""

_END_TRIAL = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'trial', '0') end
return 0
"""

_ESCALATION = """
local now = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], now, redis.call('INCR', KEYS[2]))
redis.call('PEXPIRE', KEYS[1], math.floor(tonumber(ARGV[2]) * 1000) + 1000)
return 1
"""

_LEASE = """
if ARGV[3] == '1' then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
elseif redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[4])
return 1
"""

# Saving a record needs the replica's lease: a replica whose lease lapsed (and whose
# records another replica may have taken) must not write as their owner. A remediation's
# needs its claim too, checked before anything is written: a refused save leaves no
# record for a replica adopting this one's later.
_SAVE_RECORD = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if KEYS[3] and redis.call('HGET', KEYS[3], 'token') ~= ARGV[4] then return -1 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
if KEYS[3] then redis.call('HSET', KEYS[3], 'rem', '1') end
return 1
"""

# A remediation that ended leaves no action in progress on its occurrence, and no
# reservation: nothing of it is taken over later, whatever its last row says.
_DROP_RECORD = """
local v = redis.call('HGET', KEYS[1], ARGV[1])
if v and (ARGV[2] == '0' or string.sub(v, 1, #ARGV[2] + 1) == ARGV[2] .. '|') then
  -- only the record of this token: a drop sent again late leaves a newer one alone
  redis.call('HDEL', KEYS[1], ARGV[1])
end
if KEYS[2] and redis.call('HGET', KEYS[2], 'token') == ARGV[2] then
  redis.call('HDEL', KEYS[2], 'rem', 'act', 'res', 'rtarget')
end
return 0
"""

# A dead replica's held alerts and remediations become this replica's, each with a
# fresh fencing token written on its occurrence too: one replica adopts each record.
_ADOPT = """
local p, me = ARGV[1], ARGV[2]
local out = {}
for _, id in ipairs(redis.call('ZRANGE', p .. 'replicas', 0, -1)) do
  if id ~= me and redis.call('EXISTS', p .. 'live:' .. id) == 0 then
    for _, kind in ipairs({'held', 'rem'}) do
      local from = p .. kind .. ':' .. id
      local into = p .. kind .. ':' .. me
      local flat = redis.call('HGETALL', from)
      for i = 1, #flat, 2 do
        local key, value = flat[i], flat[i + 1]
        local bar = string.find(value, '|', 1, true)
        local record = string.sub(value, bar + 1)
        local t = redis.call('INCR', p .. 'fence')
        redis.call('HSET', into, key, t .. '|' .. record)
        local occ = p .. 'occ:' .. key
        if redis.call('EXISTS', occ) == 1 then
          redis.call('HSET', occ, 'token', t, 'owner', me)
        end
        table.insert(out, kind)
        table.insert(out, t)
        table.insert(out, record)
      end
      if #flat > 0 then redis.call('PEXPIRE', into, ARGV[3]) end
      redis.call('DEL', from)
    end
    redis.call('ZREM', p .. 'replicas', id)
  end
end
return out
"""

_APPEND = """
local n = tonumber(ARGV[1])
local count = tonumber(redis.call('GET', KEYS[2]) or '0')
if count + n > tonumber(ARGV[2]) then return {0, count} end
local id = redis.call('XADD', KEYS[1], '*', 'n', ARGV[1], 'source', ARGV[3],
  'request_id', ARGV[4], 'received_at', ARGV[5], 'payload', ARGV[6])
return {id, redis.call('INCRBY', KEYS[2], n)}
"""

_ACK = """
local done = 0
for i = 1, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], 'engine', ARGV[i]) == 1 then
    redis.call('DECRBY', KEYS[2], ARGV[i + 1])
    done = done + 1
  end
  redis.call('XDEL', KEYS[1], ARGV[i])
end
if tonumber(redis.call('GET', KEYS[2]) or '0') < 0 then redis.call('SET', KEYS[2], 0) end
return done
"""

# Resets the idle time of entries this consumer still works on (and only those: one
# another replica claimed meanwhile is not taken back).
_TOUCH = """
local kept = 0
for i = 1, #ARGV - 1 do
  local p = redis.call('XPENDING', KEYS[1], 'engine', ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[#ARGV] then
    redis.call('XCLAIM', KEYS[1], 'engine', ARGV[#ARGV], 0, ARGV[i], 'JUSTID')
    kept = kept + 1
  end
end
return kept
"""


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(raw: Any) -> dict[str, Any]:
    """A stream entry's fields (redis-py answers a dict; RESP itself a flat list)."""
    if isinstance(raw, dict):
        return {_s(k): v for k, v in raw.items()}
    return {_s(raw[i]): raw[i + 1] for i in range(0, len(raw), 2)}


def _pause(raw: Any) -> Pause:
    """A pause as stored; one that cannot be read is in force until resumed."""
    try:
        d = json.loads(raw)
        until = d.get("until")
        return Pause(
            str(d["by"]), str(d["reason"]), float(d["since"]),
            None if until is None else float(until),
        )  # fmt: skip
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        return Pause(
            "?", f"this pause cannot be read ({exc!r:.120}): in force until resumed", 0.0, None
        )


def checkpoint() -> None:
    """Raise CancelledError if this task was asked to stop: asyncio.wait_for (3.11) and
    redis-py's own timeouts can swallow a cancellation that races with their timeout,
    and a loop that went on after that would never stop."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _through_restart(
    call: Callable[[], Awaitable[T]], *, retry_sent: bool, grace: float | None = None
) -> T:
    """`call`, tried again for up to `grace` (`RESTART_GRACE`) while Redis refuses it
    (restarting, loading) — or with `retry_sent` (a call that can run twice) also while
    it does not answer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (RESTART_GRACE if grace is None else grace)
    while True:
        try:
            return await call()
        except errors.BackendUnavailable as exc:
            if not (retry_sent or isinstance(exc, Unsent)) or loop.time() >= deadline:
                raise
        await asyncio.sleep(0.2)


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class Hooks(Protocol):
    """What the shared state calls back into the engine."""

    async def adopt(self, held: list[dict[str, Any]], remediations: list[dict[str, Any]]) -> None:
        """Records of a dead replica, now this replica's: hold them, resume them."""

    def abandon(self) -> None:
        """This replica's lease lapsed: drop what it held in memory (others adopt it)."""

    async def resolved_elsewhere(self, alert: Alert) -> None:
        """Another replica saw this alert resolve."""

    def holds_approval(self, decision_id: int) -> bool:
        """Whether this replica holds decision `decision_id` awaiting approval."""

    async def approval_handed(self, answer: dict[str, Any]) -> tuple[int, str]:
        """A human's answer another replica received for an approval held here: decide
        it as if it had come here; (HTTP status, what happened)."""


class RedisState:
    """The limit state and work records of every replica, in one Redis."""

    needs_replay = False
    """Redis keeps the limits across restarts: replaying the audit would count twice."""

    def __init__(
        self, client: Redis, config: RedisBackend, *, replica: str, lease: Redis | None = None
    ) -> None:
        """`lease`: a client of its own for the lease, so that a storm filling `client`'s
        pool never delays the heartbeat past `claim_idle` (a busy replica is not dead)."""
        self._r = client
        self._config = config
        self.replica = replica
        self._p = f"{{{config.key_prefix}}}:"
        self._pauses: dict[str, Pause] = {}
        self._open: dict[str, int] = {}
        self._locks: dict[str, int] = {}
        """Target → fencing token of the locks this replica holds (renewed while held)."""
        self._claim = client.script(_CLAIM, "claim")
        self._set_occ = client.script(_SET_OCCURRENCE, "set_occurrence")
        self._forget = client.script(_FORGET_OCCURRENCE, "forget_occurrence")
        self._unforgotten: dict[str, tuple[int, bool]] = {}
        """Occurrence key → (claim token, only while still `deciding`) of the claims this
        replica failed to forget (Redis away)."""
        self._unclaimed: dict[str, set[str]] = {}
        """Claims sent without an answer (key → their nonces): let go of later."""
        self._reserve = client.script(_RESERVE, "reserve")
        self._release = client.script(_RELEASE, "release")
        self._take_lock = client.script(_TAKE_LOCK, "take_lock")
        self._renew = client.script(_RENEW_LOCKS, "renew_locks")
        self._result = client.script(_RECORD_RESULT, "record_result")
        self._end_trial = client.script(_END_TRIAL, "end_trial")
        self._escalation = client.script(_ESCALATION, "escalation_allowed")
        self._lease = (lease or client).script(_LEASE, "lease")
        self._save = client.script(_SAVE_RECORD, "save_record")
        self._drop = client.script(_DROP_RECORD, "drop_record")
        self._adopt = client.script(_ADOPT, "adopt")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handed: set[asyncio.Task[None]] = set()
        """Answers handed here by other replicas, being decided."""
        self._following: set[str] = set()
        """The channels this replica is subscribed to now (`_follow`): a PUBLISH on
        `{P}:answers` counts this replica among its receivers while "answers" is here."""

    def key(self, *parts: str) -> str:
        return self._p + ":".join(parts)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self, now: float) -> None:
        """Take this replica's lease and read the pauses."""
        await self._take_lease(now, first=True)
        await self._refresh()

    async def _take_lease(self, now: float, *, first: bool) -> bool:
        ok = await self._lease(
            [self.key("live", self.replica), self.key("replicas")],
            [_ms(self._config.claim_idle), now, "1" if first else "0", self.replica],
        )
        return bool(ok)

    async def run(self, hooks: Hooks, clock: Callable[[], float]) -> None:
        """Until cancelled: renew the lease and locks, adopt what dead replicas left,
        read the pauses and open circuits again, follow resolves seen elsewhere and
        decide the answers to approvals held here that other replicas received."""
        watcher = asyncio.create_task(
            self._follow("resolves", functools.partial(self._resolved_message, hooks),
                         what="resolve channel"), name="redis-resolves",
        )  # fmt: skip
        answers = asyncio.create_task(
            self._follow("answers", functools.partial(self._handed_answer, hooks),
                         what="answer channel"), name="redis-answers",
        )  # fmt: skip
        keeper = asyncio.create_task(self._keep_lease(hooks, clock), name="redis-lease")
        try:
            beat = self._config.claim_idle / 3
            poll = min(self._config.poll_interval, beat)
            next_beat = 0.0
            loop = asyncio.get_running_loop()
            while True:
                checkpoint()
                try:
                    if loop.time() >= next_beat:
                        next_beat = loop.time() + beat
                        await self._work(hooks)
                    await self._refresh()
                except errors.BackendUnavailable as exc:
                    log.warning("redis_unavailable", error=str(exc))
                except Exception:  # a bug, or a record it cannot read
                    # This loop brings the pauses (the kill switch) and the adoptions: it
                    # must outlive any one bad poll, or the replica acts on a stale view.
                    log.exception("shared_state_poll_failed")
                await asyncio.sleep(poll)
        finally:
            for task in (watcher, answers, keeper):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _keep_lease(self, hooks: Hooks, clock: Callable[[], float]) -> None:
        """The lease alone, on its own connection: renewed every third of claim_idle."""
        while True:
            checkpoint()
            await asyncio.sleep(self._config.claim_idle / 3)
            try:
                await self._renew_lease(hooks, clock())
            except errors.BackendUnavailable as exc:
                log.warning("redis_unavailable", error=str(exc), what="lease")
            except Exception:  # the lease must outlive any one failure
                log.exception("lease_renewal_failed")

    async def _beat(self, hooks: Hooks, now: float) -> None:
        await self._renew_lease(hooks, now)
        await self._work(hooks)

    async def _renew_lease(self, hooks: Hooks, now: float) -> None:
        if not await self._take_lease(now, first=False):
            # Stalled past claim_idle (a pause, a partition): others may have adopted
            # our records. Drop them here and go on as a new replica.
            old = self.replica
            self.replica = new_replica_id()
            self._locks.clear()
            hooks.abandon()
            log.error("replica_lease_lost", replica=old, new_replica=self.replica)
            await self._take_lease(now, first=True)

    async def _work(self, hooks: Hooks) -> None:
        """Renew the target locks held; adopt what dead replicas left."""
        if self._locks:
            targets = list(self._locks)
            await self._renew(
                [self.key("lock", t) for t in targets],
                [_ms(self._config.lock_ttl), *(self._locks[t] for t in targets)],
            )
        flat = await self._adopt([], [self._p, self.replica, _ms(RECORDS_TTL)])
        if flat:
            held: list[dict[str, Any]] = []
            rems: list[dict[str, Any]] = []
            for i in range(0, len(flat), 3):
                try:
                    record = json.loads(flat[i + 2])
                    record["token"] = int(flat[i + 1])
                except (ValueError, TypeError) as exc:
                    # Nothing to resume from it; the others are still adopted.
                    log.error("record_unreadable", kind=_s(flat[i]), error=str(exc)[:200])
                    continue
                (held if _s(flat[i]) == "held" else rems).append(record)
            log.warning("records_adopted", held=len(held), remediations=len(rems))
            await hooks.adopt(held, rems)

    async def _refresh(self) -> None:
        raw, circuits = await self._r.pipeline(
            [("HGETALL", self.key("pauses")), ("ZRANGE", self.key("circopen"), 0, -1)],
            transaction=False,
        )
        # redis-py answers HGETALL with a dict. An entry that cannot be read still pauses
        # what its key names: a kill switch is never dropped for its form.
        self._pauses = {key: _pause(value) for key, value in _fields(raw).items()}
        counts: dict[str, int] = {}
        for member in circuits:
            rule = _s(member).partition("\x00")[0]
            counts[rule] = counts.get(rule, 0) + 1
        self._open = counts

    async def _follow(
        self, name: str, handle: Callable[[bytes], Awaitable[None]], *, what: str
    ) -> None:
        """Until cancelled: every message published on `{P}:name` to `handle`, subscribed
        again after Redis went away. A message `handle` fails on is logged and passed
        over: one bad message must not end the subscription."""
        channel = self.key(name)
        while True:
            checkpoint()
            try:
                pubsub = await self._r.subscribe(channel)
                self._following.add(name)
                try:
                    while True:
                        checkpoint()
                        data = await self._r.message(pubsub, timeout=1.0)
                        if data is None:
                            continue
                        try:
                            await handle(data)
                        except Exception:  # a message it cannot take, or a bug: logged
                            log.exception("channel_message_failed", channel=name)
                finally:
                    self._following.discard(name)
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            except errors.BackendUnavailable as exc:
                log.warning("redis_unavailable", error=str(exc), what=what)
                await asyncio.sleep(self._config.poll_interval)

    async def _resolved_message(self, hooks: Hooks, data: bytes) -> None:
        message = json.loads(data)
        if message.get("replica") != self.replica:
            await hooks.resolved_elsewhere(Alert.from_json(message["alert"]))

    async def _handed_answer(self, hooks: Hooks, data: bytes) -> None:
        message = json.loads(data)  # one it cannot read: logged by _follow
        reply, answer = str(message["reply"]), message["answer"]
        decision_id = int(answer["id"])
        if message.get("replica") == self.replica or not hooks.holds_approval(decision_id):
            return  # another replica's to answer (or nobody's: the asker times out)
        task = asyncio.create_task(
            self._decide_handed(hooks, reply, answer), name=f"approval-answer:{decision_id}"
        )
        self._handed.add(task)
        task.add_done_callback(self._handed.discard)

    async def _decide_handed(self, hooks: Hooks, reply: str, answer: dict[str, Any]) -> None:
        key = self.key("answer", reply)
        if not await self._reply(key, {"replica": self.replica}):
            return  # the asker hears nothing and says no replica holds it: nothing decided
        try:
            status, what = await hooks.approval_handed(answer)
        except Exception:  # the asker must hear an answer; the error is logged
            log.exception("approval_answer_failed", decision_id=answer.get("id"))
            status, what = 500, f"failed: an internal error (logged by replica {self.replica})"
        await self._reply(key, {"replica": self.replica, "status": status, "what": what})

    async def _reply(self, key: str, said: Mapping[str, Any]) -> bool:
        """Write this replica's reply to a handed answer; False if Redis did not take it."""
        try:
            await self._r.call("SET", key, json.dumps(said), "PX", _ms(REPLY_TTL))
        except errors.BackendUnavailable as exc:
            log.warning("redis_unavailable", error=str(exc), what="approval answer reply")
            return False
        return True

    async def close(self) -> None:
        # An answer handed here and being decided is let finish (cut off, it could leave
        # an approval taken and never run), as are the writes under way.
        for task in [*self._handed, *self._tasks]:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2.0)

    # -- pauses ---------------------------------------------------------------------

    @property
    def paused(self) -> bool:
        return GLOBAL in self._pauses

    def pause_of(self, rule: str, now: float) -> Pause | None:
        if not self._pauses:
            return None
        for key in (GLOBAL, rule):
            p = self._pauses.get(key)
            if p is not None and p.active(now):
                return p
        return None

    def pauses(self) -> dict[str, Pause]:
        return dict(self._pauses)

    async def set_pause(self, key: str, pause: Pause | None) -> None:
        if pause is None:
            await self._r.call("HDEL", self.key("pauses"), key)
            self._pauses.pop(key, None)
        else:
            await self._r.call("HSET", self.key("pauses"), key, json.dumps(pause.to_json()))
            self._pauses[key] = pause

    # -- occurrences ------------------------------------------------------------------

    def _occ(self, key: str) -> str:
        return self.key("occ", key)

    async def claim(
        self, key: str, *, skip: Reason | None, aged: bool, now: float, token: int = 0
    ) -> Claim | None:
        transient = "," + ",".join(str(r) for r in guards.TRANSIENT) + ","
        nonce = uuid.uuid4().hex[:16]
        keys = [self._occ(key)]
        args: list[Any] = [
            str(skip or ""), "1" if aged else "0", now, self.replica, _ms(OCCURRENCE_TTL),
            token, self._p, transient, nonce,
        ]  # fmt: skip
        try:
            # The claim's own nonce makes it safe to send again: a claim that ran without
            # our hearing of it answers the same, instead of "another replica decides".
            out = await _through_restart(lambda: self._claim(keys, args), retry_sent=True)
        except errors.BackendUnavailable:
            # It may have run all the same: let go of it before the alert is handed out
            # again, or that delivery would find it `deciding` here and skip it.
            self._unclaimed.setdefault(key, set()).add(nonce)
            raise
        if int(out[0]) == 0:
            return None
        return Claim(_s(out[1]) or None, int(out[2]), int(out[3]), int(out[4]), _s(out[5]))

    async def occurrence(self, key: str) -> str | None:
        status = await self._r.call("HGET", self._occ(key), "status")
        return None if status is None else _s(status)

    async def set_occurrence(self, key: str, status: str, now: float, *, token: int = 0) -> None:
        ok = await self._set_occ([self._occ(key)], [status, now, token, _ms(OCCURRENCE_TTL)])
        if not ok:
            raise errors.Superseded(
                f"occurrence {key!r} was taken over by another replica: not recorded here"
            )

    async def _let_go(
        self, key: str, token: int = 0, *, deciding: bool = False, nonce: str = ""
    ) -> None:
        """The forget script: unconditional (a failed decision's claim, with the record it
        may have kept), or only while still `deciding` (and under `nonce`, if given)."""
        if deciding:
            await self._forget([self._occ(key)], [token, "1", nonce])
        else:
            await self._forget([self._occ(key), self.key("rem", self.replica)],
                               [token, "0", "", key])  # fmt: skip

    async def forget_occurrence(self, key: str, *, token: int = 0) -> None:
        try:
            await self._let_go(key, token)
        except errors.BackendUnavailable:
            # Redis is away (the reason the decision failed, mostly): the claim stays
            # with this live replica, so no other decides the occurrence; forgotten
            # once Redis answers, before the journal hands the alert out again.
            self._unforgotten[key] = (token, False)
            raise

    def forget_later(self, key: str, token: int) -> None:
        """A row of this claim may not have reached the spool (Redis did not answer):
        forget the claim before the alert is decided again, if it is still `deciding`
        (a row that made it set the occurrence's status with it) and no remediation owns
        it (its step rows are pushed under its token too: its record is what counts)."""
        self._unforgotten.setdefault(key, (token, True))

    async def forget_pending(self) -> bool:
        """Forget the claims a failed decision could not (`forget_occurrence`); whether
        none is left. Raises `errors.BackendUnavailable` while Redis does not answer."""
        await self._r.call("PING")
        for key, value in list(self._unforgotten.items()):
            token, deciding = value
            await self._let_go(key, token, deciding=deciding)
            if self._unforgotten.get(key) == value:  # not noted again meanwhile
                del self._unforgotten[key]
        for key, nonces in list(self._unclaimed.items()):
            for nonce in list(nonces):
                await self._let_go(key, deciding=True, nonce=nonce)
                nonces.discard(nonce)
            if not nonces:  # none added meanwhile
                self._unclaimed.pop(key, None)
        return not self._unforgotten and not self._unclaimed

    # -- limits -------------------------------------------------------------------------

    async def reserve(
        self, *, rule: Rule, target: str, budgets: Budgets, now: float, dry_run: bool,
        shadow: bool = False, occurrence: str = "", claim: int = 0,
    ) -> Verdict:  # fmt: skip
        lim = rule.limits
        pair = f"{rule.name}\x00{target}"
        expiry = max(lim.cooldown, lim.window, rule.circuit_breaker.reset_after) + 60
        # A shadow rule keeps its own cooldown and spends none of the shared budgets.
        last = self.key("last", f"{target}\x00shadow:{rule.name}" if shadow else target)
        keys = [
            last, self.key("att", pair), self.key("ract", rule.name),
            self.key("budget"), self.key("btargets"), self.key("circ", pair),
            self.key("lock", target), self.key("fence"), self.key("rtargets", rule.name),
        ]  # fmt: skip
        args = [
            now, lim.cooldown, lim.window, lim.max_attempts,
            -1 if lim.max_actions is None else lim.max_actions, budgets.window,
            budgets.max_actions_per_window, budgets.max_targets_per_window,
            rule.circuit_breaker.reset_after, "1" if dry_run else "0",
            _ms(self._config.lock_ttl), _ms(expiry), target, _ms(budgets.window + 60),
            "1" if shadow else "0", claim,
        ]  # fmt: skip
        if occurrence and claim:
            keys.append(self._occ(occurrence))
        out = [_s(v) for v in await self._reserve(keys, args)]
        kind = out[0]
        if kind == "ok":
            token = int(out[2])
            if token:
                self._locks[target] = token
            return Verdict(None, attempt=int(out[1]), token=token)
        if kind == "cooldown":
            return guards.cooldown(target, float(out[1]), now, lim)
        if kind == "max_attempts":
            return guards.max_attempts(target, int(out[1]), lim)
        if kind == "rate_limited":
            return guards.rate_limited(int(out[1]), lim)
        if kind == "budget_actions":
            return Verdict(Reason.BUDGET_EXHAUSTED, guards.budget_actions(int(out[1]), budgets))
        if kind == "budget_targets":
            return Verdict(Reason.BUDGET_EXHAUSTED, guards.budget_targets(int(out[1]), budgets))
        if kind == "circuit_open":
            c = Circuit(int(out[1]), float(out[2]), out[3] == "1")
            return guards.circuit_open(target, c, rule, now)
        return guards.locked(target, now)

    async def release(self, target: str, token: int = 0) -> None:
        if self._locks.get(target) == token:
            del self._locks[target]  # not renewed any more: it lapses by itself
        if not token:
            return
        try:
            await self._release([self.key("lock", target)], [token])
        except errors.BackendUnavailable as exc:
            # Best effort: a lock not let go of lapses within lock_ttl. Raising here
            # (mostly from an action's `finally`) would hide what the action did.
            log.warning("lock_release_failed", target=target, error=str(exc),
                        lapses_in=self._config.lock_ttl)  # fmt: skip

    async def take_lock(
        self, target: str, token: int, *, occurrence: str = "", claim: int = 0
    ) -> int:
        keys = [self.key("lock", target), self.key("fence")]
        if occurrence and claim:
            keys.append(self._occ(occurrence))
        args: list[Any] = [token, _ms(self._config.lock_ttl), claim, target]
        new = int(await self._take_lock(keys, args))
        if new:
            self._locks[target] = new  # renewed from now on, as a lock it took
        return new

    async def action_started(self, key: str) -> bool | None:
        act = await self._r.call("HGET", self._occ(key), "act")
        if act is None:
            return None
        return _s(act) == "started"

    async def holds_lock(self, target: str, token: int) -> bool:
        """False also when Redis cannot say, even after `RESTART_GRACE`: a lock that
        cannot be checked is not held (the action is not run)."""
        if not token:
            return True
        key = self.key("lock", target)
        try:
            held = await _through_restart(lambda: self._r.call("GET", key), retry_sent=True)
        except errors.BackendUnavailable as exc:
            log.warning("lock_check_failed", target=target, error=str(exc))
            return False
        return _s(held or b"") == str(token)

    async def end_trial(self, *, rule: Rule, target: str) -> None:
        keys = [self.key("circ", f"{rule.name}\x00{target}")]
        await _through_restart(lambda: self._end_trial(keys, []), retry_sent=True)

    async def record_result(self, *, rule: Rule, target: str, ok: bool, now: float) -> bool:
        pair = f"{rule.name}\x00{target}"
        cb = rule.circuit_breaker
        ttl = _ms(max(rule.limits.window, cb.reset_after) * 2 + 60)
        keys = [self.key("circ", pair), self.key("circopen")]
        args: list[Any] = ["1" if ok else "0", now, cb.open_after, cb.reset_after, ttl, pair]
        # A success (the count reset) can run twice; a failure counted is not repeated
        # once it may have reached Redis: only a refused call is.
        opened = await _through_restart(lambda: self._result(keys, args), retry_sent=ok)
        return bool(opened)

    async def escalation_allowed(self, *, now: float, window: float, limit: int) -> bool:
        ok = await self._escalation([self.key("esc"), self.key("fence")], [now, window, limit])
        return bool(ok)

    async def snapshot(self, rule: Rule, now: float) -> dict[str, object]:
        since = now - max(
            rule.limits.window, rule.limits.cooldown, rule.circuit_breaker.reset_after
        )
        targets = [
            _s(t)
            for t in await self._r.call(
                "ZRANGEBYSCORE", self.key("rtargets", rule.name), since, "+inf", "LIMIT", 0, 1000
            )
        ]
        out: dict[str, object] = {}
        for t in sorted(targets):
            pair = f"{rule.name}\x00{t}"
            last, attempts, circ, lock = await self._r.pipeline(
                [
                    ("GET", self.key("last", t)),
                    ("ZCOUNT", self.key("att", pair), f"({now - rule.limits.window}", "+inf"),
                    ("HMGET", self.key("circ", pair), "failures", "opened_at", "trial"),
                    ("EXISTS", self.key("lock", t)),
                ],
                transaction=False,
            )
            c = None
            if circ[1] not in (None, b""):
                c = Circuit(int(circ[0] or 0), float(circ[1]), _s(circ[2] or b"0") == "1")
            out[t] = {
                "cooldown_remaining_seconds": max(0.0, rule.limits.cooldown - (now - float(last)))
                if last is not None
                else 0.0,
                "attempts_in_window": int(attempts),
                "consecutive_failures": int(circ[0] or 0),
                "circuit_open": guards.circuit_blocks(c, rule, now),
                "locked": bool(lock),
            }
        return {"targets": out}

    def open_circuits(self, rules: Mapping[str, Rule], now: float) -> dict[str, int]:
        """From the last poll (`backend.redis.poll_interval`): a circuit opened or
        half-opened since shows on the next one."""
        return {name: self._open.get(name, 0) for name in rules}

    def restore_attempt(self, *, rule: str, target: str, at: float, shadow: bool = False) -> None:
        return None  # never replayed: Redis keeps the attempts themselves

    def restore_escalation(self, at: float) -> None:
        return None  # never replayed: Redis keeps the escalations sent itself

    async def relock(self, target: str, token: int = 0) -> None:
        if not token:
            return
        ok = await self._r.call(
            "SET", self.key("lock", target), str(token), "PX", _ms(self._config.lock_ttl), "NX"
        )
        if ok:
            self._locks[target] = token  # renewed from now on, as a lock it took

    async def over_budget(self, budgets: Budgets, now: float) -> str | None:
        key = self.key("budget")
        await self._r.call("ZREMRANGEBYSCORE", key, "-inf", now - budgets.window)
        spent = int(await self._r.call("ZCARD", key) or 0)
        if spent > budgets.max_actions_per_window:
            return guards.budget_actions(spent, budgets)
        return None

    # -- records of work under way ----------------------------------------------------

    def _spawn_write(self, coro: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._write_done)
        return task

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("redis_write_failed", error=str(task.exception()))

    async def _save_record(self, kind: str, key: str, record: Mapping[str, Any]) -> None:
        token = int(record.get("token") or 0)
        keys = [self.key("live", self.replica), self.key(kind, self.replica)]
        if kind == "rem":
            keys.append(self._occ(key))
        value = f"{token}|{json.dumps(record)}"
        args: list[Any] = [key, value, _ms(RECORDS_TTL), token]
        ok = await _through_restart(lambda: self._save(keys, args), retry_sent=True)
        if ok == 0:
            raise errors.Superseded(f"replica {self.replica} lost its lease: {key!r} not saved")
        if ok == -1:
            raise errors.Superseded(f"{key!r} is another replica's now: not saved here")

    async def _drop_record(self, kind: str, key: str, token: int) -> None:
        keys = [self.key(kind, self.replica)]
        if kind == "rem":
            keys.append(self._occ(key))
        await _through_restart(lambda: self._drop(keys, [key, token]), retry_sent=True)

    def save_held(self, key: str, record: Mapping[str, Any]) -> asyncio.Future[Any] | None:
        return self._spawn_write(self._save_record("held", key, record))

    def drop_held(self, key: str) -> None:
        self._spawn_write(self._drop_record("held", key, 0))

    async def held(self) -> list[dict[str, Any]]:
        return []  # a new replica owns nothing; what an old one held is adopted

    async def save_remediation(self, key: str, record: Mapping[str, Any]) -> None:
        await self._save_record("rem", key, record)

    def drop_remediation(self, key: str, token: int = 0) -> asyncio.Future[Any] | None:
        return self._spawn_write(self._drop_record("rem", key, token))

    async def remediations(self) -> list[dict[str, Any]]:
        return []

    # -- resolves ---------------------------------------------------------------------

    async def announce_resolved(self, alert: Alert, now: float) -> None:
        message = json.dumps({"replica": self.replica, "alert": alert.to_json()})
        await self._r.pipeline(
            [
                ("SET", self.key("resolved", alert.occurrence), now, "PX", _ms(RESOLVED_TTL)),
                ("PUBLISH", self.key("resolves"), message),
            ],
            transaction=False,
        )

    async def resolved_at(self, occurrence: str) -> float | None:
        at = await self._r.call("GET", self.key("resolved", occurrence))
        return None if at is None else float(at)

    # -- approvals held by another replica ----------------------------------------------

    async def hand_approval(
        self, answer: Mapping[str, Any], *, wait_result: bool = True
    ) -> tuple[int, str] | None:
        """Publish `answer` on `{P}:answers` for the replica holding its approval and
        poll the reply key for its reply. None when no replica says it holds it within
        HAND_WAIT; else what that replica answered (`wait_result` False: (200, its name)
        once it has it, for the Slack click it answers the user of itself)."""
        reply = uuid.uuid4().hex
        message = json.dumps({"replica": self.replica, "reply": reply, "answer": dict(answer)})
        heard = int(await self._r.call("PUBLISH", self.key("answers"), message))
        if heard - (1 if "answers" in self._following else 0) <= 0:
            # No other replica listens (every replica subscribes on the one server its
            # URL names, which counts them): none can hold it, no need to wait.
            return None
        key = self.key("answer", reply)
        clock = asyncio.get_running_loop()
        deadline = clock.time() + HAND_WAIT
        holder: str | None = None
        while True:
            raw = await self._r.call("GET", key)
            if raw is not None:
                said = json.loads(raw)
                if "status" in said:
                    return int(said["status"]), str(said["what"])
                if holder is None:
                    holder = str(said.get("replica", "?"))
                    if not wait_result:
                        return 200, f"handed to replica {holder}"
                    deadline = clock.time() + HAND_RESULT_WAIT
            if clock.time() >= deadline:
                break
            await asyncio.sleep(HAND_POLL)
        if holder is None:
            return None
        return 504, (
            f"replica {holder} holds decision {answer.get('id')} and took the answer, but "
            f"did not say what came of it within {HAND_RESULT_WAIT:.0f}s: see its audit row"
        )


# --------------------------------------------------------------------------- journal


class RedisJournal:
    """Acknowledged requests in a Redis Stream, decided by whichever replica reads them.

    `append` adds the request (one entry, the payload as received) and returns nothing
    for this replica to decide at once: every replica reads the stream with XREADGROUP
    (`run`), so the alerts go to whichever has room. An entry stays pending on its
    reader until every alert in it is decided and durable; then it is acknowledged and
    deleted (XACK + XDEL), so the stream holds only unfinished work, bounded by
    `intake.backlog_limit` alerts across replicas. A reader renews its entries while it
    works on them; a replica that stops (crash, kill -9, a stall past
    `backend.redis.claim_idle`) leaves them idle, and another claims them (XAUTOCLAIM).
    """

    def __init__(
        self, client: Redis, config: RedisBackend, *, limit: int, state: RedisState,
        local: Database | None = None,
    ) -> None:  # fmt: skip
        """`local`: the replica's own SQLite database, for what the intake remembers
        beside a request (`append(also=...)`: the SNS MessageIds it accepted)."""
        self._local_db = local
        self._r = client
        self._config = config
        self._limit = limit
        self._state = state
        self._stream = state.key("journal")
        self._count = state.key("journal", "alerts")
        self._append = client.script(_APPEND, "journal_append")
        self._ack = client.script(_ACK, "journal_ack")
        self._touch = client.script(_TOUCH, "journal_touch")
        self._backlog = 0
        self._open: dict[str, list[int]] = {}
        """Entry id → [alerts not finished, alerts in it] of the entries this replica holds."""
        self._acks: dict[str, int] = {}
        self._ack_task: asyncio.Task[None] | None = None
        self._local = 0
        self._appended = asyncio.Event()
        self._retry: list[JournalEntry] = []
        """Alerts whose decision failed, handed to the engine again (`keep`)."""
        self._kept_tries: dict[int, int] = {}

    @property
    def backlog(self) -> int:
        """Alerts journaled by all replicas and not yet decided, as last seen."""
        return self._backlog

    async def start(self) -> None:
        try:
            await self._r.call("XGROUP", "CREATE", self._stream, GROUP, "0", "MKSTREAM")
        except errors.BackendUnavailable as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def append(
        self, *, source: str, payload: bytes, alerts: Sequence[Alert], request_id: str,
        received_at: dt.datetime, also: Also | None = None, limit: int | None = None,
    ) -> list[JournalEntry]:  # fmt: skip
        if not alerts:
            return []
        if also is not None and self._local_db is not None:
            # Before the stream entry: remembered here (a re-delivery to this replica is a
            # duplicate) even if what follows fails; occurrence dedup in Redis is what
            # keeps a re-delivery to another replica from acting twice.
            await self._local_db.submit(also)
        out = await self._append(
            [self._stream, self._count],
            [
                len(alerts),
                self._limit if limit is None else limit,
                source,
                request_id,
                iso(received_at),
                payload,
            ],
        )
        self._backlog = int(out[1])
        self._appended.set()
        if out[0] == 0:
            raise errors.Backpressure(
                f"journal backlog at {self._backlog} of {self._limit} "
                "(intake.backlog_limit, all replicas); retry later"
            )
        if self._config.wait_replicas:
            copies = await self._r.call(
                "WAIT", self._config.wait_replicas, _ms(self._config.timeout / 2)
            )
            if int(copies) < self._config.wait_replicas:
                # In the stream, so it will be decided; but not yet on enough copies for
                # the guarantee configured: the sender's retry is a duplicate, not a loss.
                raise errors.BackendUnavailable(
                    f"journal write reached {copies} of {self._config.wait_replicas} Redis "
                    "replicas in time (backend.redis.wait_replicas)"
                )
        return []

    def keep(self, entry: JournalEntry) -> None:
        """Its decision failed (Redis or the audit spool away, a bug): still pending on
        this replica, which hands the alert to the engine again once the claim it left
        is forgotten (`run`); after `KEEP_RETRIES` attempts it is left pending for the
        next start (a bug, not an outage). Should this replica die meanwhile, another
        claims the entry and decides it."""
        if entry.kept:
            return
        entry.kept = True
        tries = self._kept_tries.pop(id(entry), 0) + 1
        if tries > KEEP_RETRIES:
            log.error("journal_entry_kept", entry=repr(entry), attempts=tries - 1)
            self._backlog = max(0, self._backlog - 1)
            self._local -= 1
            return
        again = JournalEntry(entry.row, entry.alert, entry.request_id)
        self._kept_tries[id(again)] = tries
        self._retry.append(again)

    def finish(self, entry: JournalEntry) -> None:
        if entry.kept:
            return
        self._kept_tries.pop(id(entry), None)
        row = str(entry.row)
        left = self._open.get(row)
        self._local -= 1
        if left is None:
            return
        left[0] -= 1
        if left[0] > 0:
            return
        del self._open[row]
        self._acks[row] = left[1]
        if self._ack_task is None or self._ack_task.done():
            self._ack_task = asyncio.ensure_future(self._flush_acks())

    async def _flush_acks(self) -> None:
        await asyncio.sleep(0)  # gather what finished in this loop turn
        while self._acks:
            batch, self._acks = self._acks, {}
            args: list[Any] = []
            for row, n in batch.items():
                args += [row, n]
            try:
                await self._ack([self._stream, self._count], args)
            except errors.BackendUnavailable as exc:
                # Left pending: acknowledged on the next try, or claimed and found decided.
                log.warning("journal_ack_failed", entries=len(batch), error=str(exc))
                for row, n in batch.items():
                    self._acks.setdefault(row, n)
                await asyncio.sleep(self._config.poll_interval)

    async def pending(self, replay: Replay) -> list[JournalEntry]:
        return []  # a new consumer owns nothing; entries of a dead one are claimed in run()

    async def run(self, submit: Callable[[list[JournalEntry]], None], replay: Replay) -> None:
        """Until cancelled: read new entries, claim idle ones, renew those held."""
        loop = asyncio.get_running_loop()
        every = self._config.claim_idle / 3
        next_claim = 0.0
        next_retry = loop.time() + self._config.poll_interval
        while True:
            checkpoint()
            try:
                if loop.time() >= next_claim:
                    next_claim = loop.time() + every
                    await self._renew()
                    await self._claim_idle(submit, replay)
                if self._retry and loop.time() >= next_retry:
                    next_retry = loop.time() + self._config.poll_interval
                    if await self._state.forget_pending():
                        again, self._retry = self._retry, []
                        log.info("journal_entries_retried", alerts=len(again))
                        submit(again)
                if self._local >= LOCAL_LIMIT:
                    await asyncio.sleep(0.01)
                    continue
                answer = await self._r.call(
                    "XREADGROUP", "GROUP", GROUP, self._state.replica,
                    "COUNT", READ_COUNT, "STREAMS", self._stream, ">",
                )  # fmt: skip
                if answer and answer[0][1]:
                    self._hand_out(answer[0][1], submit, replay)
                    continue
                # Nothing new: wait for this replica's next append, or look again soon
                # for the others' (no BLOCKing read: a blocked connection held across a
                # cancellation at shutdown is not given back reliably).
                self._appended.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._appended.wait(), IDLE_POLL)
            except errors.BackendUnavailable as exc:
                if "NOGROUP" in str(exc):
                    with contextlib.suppress(errors.BackendUnavailable):
                        await self.start()  # Redis lost the stream (restarted empty)
                log.warning("redis_unavailable", error=str(exc), what="journal")
                await asyncio.sleep(self._config.poll_interval)
            except Exception:  # the reader must outlive any one bad read
                log.exception("journal_read_failed")
                await asyncio.sleep(self._config.poll_interval)

    async def _renew(self) -> None:
        count = await self._r.call("GET", self._count)
        self._backlog = int(count or 0)
        rows = list(self._open)
        for i in range(0, len(rows), 500):
            await self._touch([self._stream], [*rows[i : i + 500], self._state.replica])

    async def _claim_idle(
        self, submit: Callable[[list[JournalEntry]], None], replay: Replay
    ) -> None:
        cursor = "0-0"
        for _ in range(100):  # bounded per round; the rest on the next one
            answer = await self._r.call(
                "XAUTOCLAIM", self._stream, GROUP, self._state.replica,
                _ms(self._config.claim_idle), cursor, "COUNT", READ_COUNT,
            )  # fmt: skip
            cursor = _s(answer[0])
            entries = [e for e in answer[1] if e is not None and _s(e[0]) not in self._open]
            if entries:
                log.warning("journal_entries_claimed", entries=len(entries))
                self._hand_out(entries, submit, replay)
            if cursor == "0-0":
                return

    def _hand_out(
        self, entries: list[Any], submit: Callable[[list[JournalEntry]], None], replay: Replay
    ) -> None:
        out: list[JournalEntry] = []
        for raw_id, raw_fields in entries:
            row = _s(raw_id)
            if raw_fields is None:
                continue
            fields = _fields(raw_fields)
            n = int(fields.get("n", b"0"))
            try:
                alerts = replay(
                    _s(fields["source"]), bytes(fields["payload"]),
                    parse_time(_s(fields["received_at"])),
                )  # fmt: skip
            except Exception as exc:  # noqa: BLE001 - an unreadable entry must not stop the reader
                log.error("journal_entry_unreadable", row=row, error=str(exc))
                alerts = []
            if not alerts:
                self._acks[row] = n
                continue
            self._open[row] = [len(alerts), n]
            self._local += len(alerts)
            request_id = _s(fields.get("request_id", b""))
            out.extend(JournalEntry(row, a, request_id) for a in alerts)
        if self._acks and (self._ack_task is None or self._ack_task.done()):
            self._ack_task = asyncio.ensure_future(self._flush_acks())
        if out:
            submit(out)


# --------------------------------------------------------------------------- audit spool

# One push: its writes, each fenced by its occurrence's claim token and setting that
# occurrence's status (and the action's progress) with the row — both or neither, also
# across a crash of Redis (a script is one unit in the AOF). The ids it handed out are
# kept under the push's own key: the same push sent again (its answer was lost) returns
# them and appends nothing.
_SPOOL_PUSH = """
local done = redis.call('GET', KEYS[3])
if done then return cjson.decode(done) end
local base = math.max(tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(ARGV[1]))
local out = {}
for i = 5, #ARGV, 7 do
  local kind, id, occ, token = ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 5]
  local ok = true
  if occ ~= '' and token ~= '0' then
    -- an occurrence gone (forgotten, expired) is no longer this claim's either
    ok = redis.call('HGET', occ, 'token') == token
  end
  if not ok then
    table.insert(out, '0')
  else
    if kind == 'insert' then
      base = base + 1
      id = string.format('%.0f', base)
    end
    table.insert(out, id)
    redis.call('XADD', KEYS[1], '*', 'k', kind, 'id', id, 'b', ARGV[i + 2])
    if occ ~= '' then
      if ARGV[i + 4] ~= '' then redis.call('HSET', occ, 'status', ARGV[i + 4], 'at', ARGV[2]) end
      local act = ARGV[i + 6]
      -- an action that ended used its reservation up: none is inherited after it
      if act == '-' then redis.call('HDEL', occ, 'act', 'res', 'rtarget')
      elseif act == '=' then redis.call('HSET', occ, 'act', id)
      elseif act ~= '' then redis.call('HSET', occ, 'act', act) end
      redis.call('PEXPIRE', occ, ARGV[3])
    end
  end
end
redis.call('SET', KEYS[2], string.format('%.0f', base))
redis.call('SET', KEYS[3], cjson.encode(out), 'EX', ARGV[4])
return out
"""

_FLUSH_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""


class Spool:
    """The audit's writes, spooled in a Redis stream until PostgreSQL has them
    (`backends.postgres`); ids from one counter shared by the replicas."""

    def __init__(self, client: Redis, config: RedisBackend, *, state: RedisState) -> None:
        self._r = client
        self._config = config
        self._state = state
        self._stream = state.key("audit", "spool")
        self._ids = state.key("audit", "ids")
        self._lease_key = state.key("audit", "flusher")
        self._push = client.script(_SPOOL_PUSH, "spool_push")
        self._lease = client.script(_FLUSH_LEASE, "flusher_lease")

    async def push(
        self, ops: list[tuple[str, int, str, Mark | None]], *, now: float | None = None
    ) -> list[int]:
        at = dt.datetime.now(dt.UTC).timestamp() if now is None else now
        args: list[Any] = [int(at * 1000) * 1000, at, _ms(OCCURRENCE_TTL), SPOOL_PUSH_MEMORY]
        for kind, id_, body, mark in ops:
            if mark is None:
                args += [kind, id_, body, "", "", 0, ""]
            else:
                occ = self._state.key("occ", mark.key)
                args += [kind, id_, body, occ, mark.status, mark.token, mark.act]
        # Any failure (refused while Redis restarts, or run without our hearing of it: a
        # timeout on a loaded box) is tried again for a bounded time under the push's own
        # key, so it is appended once: a row lost here would be lost for good, and one
        # written twice would show one decision twice.
        keys = [self._stream, self._ids, self._state.key("audit", "pushed", uuid.uuid4().hex)]
        try:
            ids = await _through_restart(
                lambda: self._push(keys, args), retry_sent=True, grace=SPOOL_RETRY_SECONDS
            )
        except errors.BackendUnavailable:
            # Given up: a claim whose row (or row's update) is not in the spool is let go
            # of once Redis answers, before the alert is decided again; one whose write
            # made it after all keeps its status (a duplicate, not a second row).
            for op in ops:
                mark = op[3]
                if mark is not None and mark.token:
                    self._state.forget_later(mark.key, mark.token)
            raise
        return [int(i) for i in ids]

    async def take(self, count: int, *, block: float) -> list[tuple[str, str, int, str]]:
        answer = await self._r.call(
            "XREAD", "COUNT", count, "BLOCK", _ms(block), "STREAMS", self._stream, "0-0"
        )
        if not answer:
            return []
        out = []
        for raw_id, raw_fields in answer[0][1]:
            f = _fields(raw_fields)
            out.append((_s(raw_id), _s(f["k"]), int(f["id"]), _s(f["b"])))
        return out

    async def remove(self, entries: list[str]) -> None:
        if entries:
            await self._r.call("XDEL", self._stream, *entries)

    async def lease(self) -> bool:
        ok = await self._lease(
            [self._lease_key], [self._state.replica, _ms(self._config.claim_idle)]
        )
        return bool(ok)

    async def length(self) -> int:
        return int(await self._r.call("XLEN", self._stream))
