"""The Redis store's Lua scripts: each check-and-update is one script, atomic in Redis.

They mirror ``checks.py``: token buckets (hash ``level``, ``since``; refill cap/60 a
second), budget counters (hash ``spent``, ``held`` and ``h:<request id>`` per hold,
plus a sorted set of holds by expiry) and the requests in flight under a max_parallel
(a sorted set of request ids by hold expiry, after the budget keys in KEYS: a script
counts them from the length of KEYS, so a settle an older version queued reads as
before). Time comes from the caller (ARGV), so every
replica and the tests share one notion of it; a bucket never moves back in time.
Every key a script touches is passed in KEYS (but the old ledger records a retention
deletes, and what the one-off scripts for records an older aigw wrote make from those
records). Money is integer nanos.
"""

from __future__ import annotations

# Shared by the scripts below: refill the bucket KEYS[k] of capacity cap to `now`.
_REFILL = """
local function refill(key, cap, now)
  local state = redis.call('HMGET', key, 'level', 'since')
  local level = tonumber(state[1]) or cap
  local since = tonumber(state[2]) or now
  if now > since then
    level = level + (now - since) * cap / 60
    since = now
  end
  if level > cap then level = cap end
  return level, since
end

local function store_bucket(key, cap, level, since)
  redis.call('HSET', key, 'level', string.format('%.17g', level),
             'since', string.format('%.17g', since))
  local full_in = math.ceil((cap - level) * 60000 / cap) + 1000
  redis.call('PEXPIRE', key, full_in)
end

-- Give back to the buckets KEYS[2..nb+1] what ARGV[a..] says, (cap, refund) each, up to
-- their caps; returns the index of the ARGV after them.
local function refund_buckets(nb, a, now)
  for i = 1, nb do
    local cap, refund = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    a = a + 2
    local level, since = refill(KEYS[1 + i], cap, now)
    level = level + refund
    if level > cap then level = cap end
    store_bucket(KEYS[1 + i], cap, level, since)
  end
  return a
end
"""

# Release a hold of request `rid` on budget hash `hk` (and its expiry set `zk`).
_UNHOLD = """
local function unhold(hk, zk, rid)
  local amount = redis.call('HGET', hk, 'h:' .. rid)
  if amount then
    -- A hold of 0 (a free deployment) is never subtracted: Lua would send "-0", which
    -- HINCRBY refuses, failing every script that releases it from then on.
    if tonumber(amount) ~= 0 then
      redis.call('HINCRBY', hk, 'held', -tonumber(amount))
    end
    redis.call('HDEL', hk, 'h:' .. rid)
  end
  redis.call('ZREM', zk, rid)
end

local function expire_holds(hk, zk, now)
  local gone = redis.call('ZRANGEBYSCORE', zk, '-inf', now)
  for _, rid in ipairs(gone) do unhold(hk, zk, rid) end
end
"""

# A max_parallel's set of requests in flight lives as long as its latest hold, and ms more.
_PLACES = """
local function keep_places(key, ms)
  if redis.call('PTTL', key) < ms then redis.call('PEXPIRE', key, ms) end
end

-- Give up request `rid`'s places: in the sets KEYS[first..].
local function leave_places(first, rid)
  for k = first, #KEYS do redis.call('ZREM', KEYS[k], rid) end
end
"""

# KEYS: reservation marker, then nb bucket hashes, then ng (budget hash, expiry set) pairs,
#       then ns sets of requests in flight.
# ARGV: now, request id, hold ttl s, marker ttl ms, cost, nb, ng, call nonce,
#       nb x (cap, need), ng x (amount, keep s; 0 = keep forever), ns x cap.
# Returns {granted (1/0, -1: request id already reserved), nb levels, ng x (spent, held),
# ns x in flight}, or {2}: this very call ran already (its nonce is in the marker) and was
# granted; the client sent it again because the first reply was lost.
RESERVE = (
    _REFILL
    + _UNHOLD
    + _PLACES
    + """
local now, rid = tonumber(ARGV[1]), ARGV[2]
local expires_at = now + tonumber(ARGV[3])
local cost, nb, ng = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local marker = redis.call('GET', KEYS[1])
if marker then
  if marker == ARGV[8] then return {2} end
  return {-1}
end
local out, ok, buckets = {0}, true, {}
local a = 9
for i = 1, nb do
  local cap, need = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  local level, since = refill(KEYS[1 + i], cap, now)
  buckets[i] = {level, since, cap, need}
  if need > level then ok = false end
  out[#out + 1] = string.format('%.17g', level)
end
local budgets = {}
for j = 1, ng do
  local hk, zk = KEYS[nb + 2 * j], KEYS[nb + 2 * j + 1]
  local amount, keep = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  a = a + 2
  expire_holds(hk, zk, now)
  local state = redis.call('HMGET', hk, 'spent', 'held')
  local spent, held = tonumber(state[1]) or 0, tonumber(state[2]) or 0
  if spent + held + cost > amount then ok = false end
  budgets[j] = {hk, zk, keep}
  out[#out + 1] = spent
  out[#out + 1] = held
end
local first_place = nb + 2 * ng + 2
for k = first_place, #KEYS do
  local cap = tonumber(ARGV[a])
  a = a + 1
  redis.call('ZREMRANGEBYSCORE', KEYS[k], '-inf', now)
  local running = redis.call('ZCARD', KEYS[k])
  if running >= cap then ok = false end
  out[#out + 1] = running
end
if not ok then return out end
for i = 1, nb do
  local b = buckets[i]
  store_bucket(KEYS[1 + i], b[3], b[1] - b[4], b[2])
end
for j = 1, ng do
  local hk, zk, keep = budgets[j][1], budgets[j][2], budgets[j][3]
  redis.call('HINCRBY', hk, 'held', cost)
  redis.call('HSET', hk, 'h:' .. rid, cost)
  redis.call('ZADD', zk, expires_at, rid)
  if keep > 0 then
    redis.call('EXPIRE', hk, keep)
    redis.call('EXPIRE', zk, keep)
  end
end
for k = first_place, #KEYS do
  redis.call('ZADD', KEYS[k], expires_at, rid)
  keep_places(KEYS[k], math.ceil(tonumber(ARGV[3]) * 1000) + 1000)
end
redis.call('SET', KEYS[1], ARGV[8], 'PX', ARGV[4])
out[1] = 1
return out
"""
)

# KEYS: reservation marker, nb bucket hashes (tpm only), ng (budget hash, expiry set) pairs,
#       the sets of requests in flight it has a place in.
# ARGV: now, request id, cost, nb, ng, nb x (cap, refund), ng x keep s, then "1" for a
# settle sent from the outbox: it leaves the marker as "settled" for the rest of its life,
# as another worker on the same outbox file may send it too.
# Returns 1; 2 when an outbox's settle of this reservation ran already; 0 when there is no
# marker (settled by a call whose reply was lost, or gone: too old, or lost with Redis' data).
SETTLE = (
    _REFILL
    + _UNHOLD
    + _PLACES
    + """
local now, rid, cost = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local nb, ng = tonumber(ARGV[4]), tonumber(ARGV[5])
local marker = redis.call('GET', KEYS[1])
if not marker then return 0 end
if marker == 'settled' then return 2 end
local a = refund_buckets(nb, 6, now)
for j = 1, ng do
  local hk, zk, keep = KEYS[nb + 2 * j], KEYS[nb + 2 * j + 1], tonumber(ARGV[a])
  a = a + 1
  unhold(hk, zk, rid)
  redis.call('HINCRBY', hk, 'spent', cost)
  if keep > 0 then
    redis.call('EXPIRE', hk, keep)
    redis.call('EXPIRE', zk, keep)
  end
end
leave_places(nb + 2 * ng + 2, rid)
if ARGV[a] == '1' then
  local left = redis.call('PTTL', KEYS[1])
  if left > 0 then
    redis.call('SET', KEYS[1], 'settled', 'PX', left)
    return 1
  end
end
redis.call('DEL', KEYS[1])
return 1
"""
)

# Undo a reserve whose reply was lost, which the gateway gave up on (it answered 503, or
# held the request locally), or whose caller was cancelled while it waited: whether Redis
# ran it already or runs it later (a call buffered in a stalled server's socket runs when
# the server resumes). Sent through the outbox, so once Redis answers again.
# KEYS: reservation marker, nb bucket hashes, ng (budget hash, expiry set) pairs, the sets
#       of requests in flight it would have a place in.
# ARGV: now, request id, marker ttl ms, the lost call's nonce, nb, ng, nb x (cap, refund).
# Returns 1 when it undid the hold; 0 when there was none: the marker is then a tombstone,
# which the late call finds (not its nonce) and so grants nothing.
ABANDON = (
    _REFILL
    + _UNHOLD
    + _PLACES
    + """
local now, rid = tonumber(ARGV[1]), ARGV[2]
local nb, ng = tonumber(ARGV[5]), tonumber(ARGV[6])
local marker = redis.call('GET', KEYS[1])
if marker ~= ARGV[4] then
  if not marker then redis.call('SET', KEYS[1], 'abandoned', 'PX', ARGV[3]) end
  return 0
end
redis.call('SET', KEYS[1], 'abandoned', 'PX', ARGV[3])
refund_buckets(nb, 7, now)
for j = 1, ng do
  unhold(KEYS[nb + 2 * j], KEYS[nb + 2 * j + 1], rid)
end
leave_places(nb + 2 * ng + 2, rid)
return 1
"""
)

# Push back the expiry of a request's budget holds and places while its call runs; those
# that lapsed already (and a settled or abandoned reservation's) are left alone.
# KEYS: reservation marker, ng (budget hash, expiry set) pairs, sets of requests in flight.
# ARGV: request id, now, the holds' new expiry, the marker's new ttl ms, ng.
# Returns how many holds and places it renewed.
RENEW = _PLACES + """
local marker = redis.call('GET', KEYS[1])
if not marker or marker == 'settled' or marker == 'abandoned' then return 0 end
local now, renewed = tonumber(ARGV[2]), 0
local ng = tonumber(ARGV[5])
for j = 2, 2 * ng, 2 do
  local expires = tonumber(redis.call('ZSCORE', KEYS[j + 1], ARGV[1]))
  if expires and expires > now and redis.call('HEXISTS', KEYS[j], 'h:' .. ARGV[1]) == 1 then
    renewed = renewed + redis.call('ZADD', KEYS[j + 1], 'XX', 'CH', ARGV[3], ARGV[1])
  end
end
for k = 2 * ng + 2, #KEYS do
  local expires = tonumber(redis.call('ZSCORE', KEYS[k], ARGV[1]))
  if expires and expires > now then
    renewed = renewed + redis.call('ZADD', KEYS[k], 'XX', 'CH', ARGV[3], ARGV[1])
    keep_places(KEYS[k], math.ceil((tonumber(ARGV[3]) - now) * 1000) + 1000)
  end
end
if renewed > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return renewed
"""

# Charge the spend of a reservation made locally while Redis was unreachable, once (an
# aigw from before adoption writes it too: either version reads the rows the other left
# in an outbox file); then UNADOPT, if it was adopted.
# KEYS: charge marker, ng budget hashes. ARGV: marker ttl s, cost, ng x keep s.
CHARGE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return 0 end
for j = 2, #KEYS do
  redis.call('HINCRBY', KEYS[j], 'spent', ARGV[2])
  local keep = tonumber(ARGV[1 + j])
  if keep > 0 then redis.call('EXPIRE', KEYS[j], keep) end
end
return 1
"""

# Hold in Redis what a reservation made locally while Redis was unreachable holds (its
# cost on each budget, its places under max_parallel) while its call still runs, so
# every replica counts it: once, however often it is sent (HSETNX: the hold is added
# where it is missing, never twice), and never after its settle, which leaves the marker
# charged:<request id> (CHARGE, UNADOPT). Sent again, it pushes an expiry forward, never
# back, and puts back a hold that lapsed. A hold whose expiry is past (an adoption that
# arrived late) is dropped by the next check of its budget, as any lapsed hold is.
# KEYS: the marker (charged:<request id>), ng (budget hash, expiry set) pairs, the sets of
#       requests in flight it has a place in.
# ARGV: the hold's name (adopted:<request id>, see redis_calls.adopted_hold), hold expiry,
#       cost, places ttl ms, ng, ng x keep s.
# Returns 1; 0 when it was settled already.
ADOPT = (
    _PLACES
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local rid, expires_at = ARGV[1], tonumber(ARGV[2])
local cost, ng = tonumber(ARGV[3]), tonumber(ARGV[5])
local function hold_until(zk)
  local was = tonumber(redis.call('ZSCORE', zk, rid))
  if not was or was < expires_at then redis.call('ZADD', zk, expires_at, rid) end
end
for j = 1, ng do
  local hk, zk, keep = KEYS[2 * j], KEYS[2 * j + 1], tonumber(ARGV[5 + j])
  if redis.call('HSETNX', hk, 'h:' .. rid, cost) == 1 then
    redis.call('HINCRBY', hk, 'held', cost)
  end
  hold_until(zk)
  if keep > 0 then
    redis.call('EXPIRE', hk, keep)
    redis.call('EXPIRE', zk, keep)
  end
end
for k = 2 * ng + 2, #KEYS do
  hold_until(KEYS[k])
  keep_places(KEYS[k], tonumber(ARGV[4]))
end
return 1
"""
)

# Give back what ADOPT holds for a reservation made locally, at its settle, after the
# CHARGE of its cost (if any): whatever ADOPT did (nothing, if it never ran); and leave
# the marker saying settled (CHARGE's), so an ADOPT that comes later holds nothing. Two
# scripts, not one, so an aigw from before adoption, which has CHARGE but not this,
# still charges the cost from an outbox file (and the hold lapses at its expiry).
# KEYS: the marker (charged:<request id>), ng (budget hash, expiry set) pairs, the sets of
#       requests in flight it may have a place in.
# ARGV: the hold's name (adopted:<request id>), marker ttl s, ng.
UNADOPT = (
    _UNHOLD
    + _PLACES
    + """
local rid, ng = ARGV[1], tonumber(ARGV[3])
for j = 1, ng do unhold(KEYS[2 * j], KEYS[2 * j + 1], rid) end
leave_places(2 * ng + 2, rid)
redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[2])
return 1
"""
)

# The levels of some buckets now, refilled, nothing taken nor written (a Realtime
# session's rate_limits.updated between its responses).
# KEYS: nb bucket hashes. ARGV: now, nb caps. Returns nb levels.
LEVELS = (
    _REFILL
    + """
local now, out = tonumber(ARGV[1]), {}
for i = 1, #KEYS do
  local level = refill(KEYS[i], tonumber(ARGV[1 + i]), now)
  out[i] = string.format('%.17g', level)
end
return out
"""
)

# KEYS: ng (budget hash, expiry set) pairs. ARGV: now. Returns ng x (spent, held).
BUDGETS = (
    _UNHOLD
    + """
local now = tonumber(ARGV[1])
local out = {}
for j = 1, #KEYS, 2 do
  expire_holds(KEYS[j], KEYS[j + 1], now)
  local state = redis.call('HMGET', KEYS[j], 'spent', 'held')
  out[#out + 1] = tonumber(state[1]) or 0
  out[#out + 1] = tonumber(state[2]) or 0
end
return out
"""
)

# A name as the store puts it in a key: percent-encoded as Python's quote(name, safe="").
_QUOTED = """
local function quoted(name)
  return (string.gsub(name, '[^%w_.~-]', function(c)
    return string.format('%%%02X', string.byte(c))
  end))
end
"""

# Add a record's figures to its group's in a day's totals (hash `hk`, field `group`): eight
# integers in one field, "records requests errors tokens_in tokens_out tokens_cached
# cost_nanos estimated_nanos" (an estimated record, a call a request made and did not
# use, is no request nor error: see redis_ledger.figures_of), one field, not eight, as a
# summary's read of a day costs Python per field; or, in the day's audio totals (the
# totals' key and ':audio'), the two "tokens_audio_in tokens_audio_out". The audio tokens
# have their own hash so that the totals' fields stay as an older aigw writes and reads
# them (its summaries read every field of the totals' hash, eight figures each): both
# versions write and read one day's totals during a rolling upgrade. Lua's numbers are
# doubles: exact while a sum stays under 2**53, as budgets are held to.
_ADD_UP = """
local function add_up(hk, group, figures)
  local sums, i = {}, 0
  for j = 1, #figures do sums[j] = 0 end
  local were = redis.call('HGET', hk, group)
  if were then
    for n in string.gmatch(were, '%S+') do i = i + 1; sums[i] = tonumber(n) end
  end
  for j = 1, #figures do sums[j] = string.format('%.0f', sums[j] + figures[j]) end
  redis.call('HSET', hk, group, table.concat(sums, ' '))
end
"""

# KEYS: the record's hash, the ledger (request ids by time), its indexes by key and by
# team (as many as the record has a key and a team), sorted by time too, then its day's
# totals: the ledger's, then its key's and its team's (as many), then their audio totals
# (as many, in that order).
# ARGV: request id, at, retention ms (0: forever), the cutoff time (records before it are
# past the retention), the records' hash prefix, the day's totals' ttl ms (0: forever),
# the record's group (its field in the totals), its eight figures (as _ADD_UP adds them),
# its two audio figures, then the record's field, value pairs.
# Returns 1, or 0 if recorded already: so a record is added to its day's totals once,
# whichever replica writes it and however late (an outbox's). Its hash says so
# ('rolled'), for the summing of records an older aigw wrote (ROLL_OLD_RECORDS).
# A record with no audio (most) writes no audio totals.
# With a retention, it drops up to 100 records past it from each of its indexes, deleting
# their hashes (named from their request ids, percent-encoded as Python's quote(safe="")
# does: the one place keys come from ARGV), and sets each key to expire once nothing was
# written to it for the retention (a day's totals: once the whole day is past it).
RECORD = _QUOTED + _ADD_UP + """
local function hash_key(rid)
  return ARGV[5] .. quoted(rid)
end
local function trim(zk, cutoff)
  local old = redis.call('ZRANGEBYSCORE', zk, '-inf', '(' .. cutoff, 'LIMIT', 0, 100)
  if #old > 0 then redis.call('ZREM', zk, unpack(old)) end
  return old
end
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local m = (#KEYS - 1) / 3
redis.call('HSET', KEYS[1], 'rolled', '1', unpack(ARGV, 18))
for i = 2, m + 1 do redis.call('ZADD', KEYS[i], ARGV[2], ARGV[1]) end
local figures, audio = {}, {tonumber(ARGV[16]), tonumber(ARGV[17])}
for j = 1, 8 do figures[j] = tonumber(ARGV[7 + j]) end
local last = 3 * m + 1  -- the last of the totals written
if audio[1] == 0 and audio[2] == 0 then last = 2 * m + 1 end
for i = m + 2, 2 * m + 1 do add_up(KEYS[i], ARGV[7], figures) end
for i = 2 * m + 2, last do add_up(KEYS[i], ARGV[7], audio) end
local keep = tonumber(ARGV[3])
if keep > 0 then
  for _, rid in ipairs(trim(KEYS[2], ARGV[4])) do redis.call('DEL', hash_key(rid)) end
  for i = 3, m + 1 do trim(KEYS[i], ARGV[4]) end
  for i = 1, m + 1 do redis.call('PEXPIRE', KEYS[i], keep) end
  for i = m + 2, last do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
end
return 1
"""

# Put up to `count` records of the ledger, from score `low` (skipping the first `offset` at
# it), in the indexes by key and by team, which records written before those existed are
# missing (the keys are named from the records' fields, under the namespace in ARGV).
# KEYS: the ledger. ARGV: low, offset, count, the namespace's prefix ("aigw:").
# Returns {records read, the last one's score, how many of them had that score}.
INDEX_OLD_RECORDS = _QUOTED + """
local page = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES',
                        'LIMIT', ARGV[2], ARGV[3])
local last, same = ARGV[1], 0
for i = 1, #page, 2 do
  local rid, at = page[i], page[i + 1]
  local owner = redis.call('HMGET', ARGV[4] .. 'rec:' .. quoted(rid), 'key', 'team')
  if owner[1] then redis.call('ZADD', ARGV[4] .. 'ledger:key:' .. quoted(owner[1]), at, rid) end
  if owner[2] then redis.call('ZADD', ARGV[4] .. 'ledger:team:' .. quoted(owner[2]), at, rid) end
  if at == last then same = same + 1 else last, same = at, 1 end
end
return {#page / 2, last, same}
"""

# Add up to `count` records of the ledger, from score `low` (skipping the first `offset` at
# it), to their days' totals (and audio totals, a record with audio tokens), which
# records an older aigw wrote are missing: those whose hash has no 'rolled' (RECORD's).
# The day, the keys and the group are made here as redis_ledger.py makes them for RECORD
# (day_of: the UTC day, whole days since 1970 floored exactly as usage.day_number does;
# names percent-encoded).
# KEYS: the ledger. ARGV: low, offset, count, the namespace's prefix ("aigw:"), the
# retention ms (0: forever).
# Returns {records read, the last one's score, how many of them had that score}.
ROLL_OLD_RECORDS = _QUOTED + _ADD_UP + """
local function day_of(at)
  local z = math.floor(at / 86400)
  if z * 86400 > at then z = z - 1 elseif (z + 1) * 86400 <= at then z = z + 1 end
  local days = z
  -- days since 1970-01-01 to a civil date (H. Hinnant's days_from_civil, inverted)
  z = z + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                          - math.floor(doe / 146096)) / 365)
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  local y = yoe + era * 400
  if m <= 2 then y = y + 1 end
  return string.format('%04d-%02d-%02d', y, m, d), days
end
local function part(name)
  if name then return ' =' .. quoted(name) end
  return ' '
end
local keep = tonumber(ARGV[5])
local page = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf', 'WITHSCORES',
                        'LIMIT', ARGV[2], ARGV[3])
local last, same = ARGV[1], 0
for i = 1, #page, 2 do
  local rid, at = page[i], page[i + 1]
  local hk = ARGV[4] .. 'rec:' .. quoted(rid)
  local r = redis.call('HMGET', hk, 'rolled', 'status', 'key', 'team', 'route',
                       'deployment', 'tokens_in', 'tokens_out', 'tokens_cached', 'cost_nanos',
                       'estimated', 'tokens_audio_in', 'tokens_audio_out')
  if r[2] and not r[1] then
    local day, z = day_of(tonumber(at))
    local base = ARGV[4] .. 'ledger:day:' .. day
    local totals = {base}
    if r[3] then totals[#totals + 1] = base .. ':key:' .. quoted(r[3]) end
    if r[4] then totals[#totals + 1] = base .. ':team:' .. quoted(r[4]) end
    local group = part(r[3]) .. part(r[4]) .. part(r[5]) .. part(r[6])
    local cost, estimated = tonumber(r[10]), r[11] == '1'  -- a call cut short: no request
    local figures = {1, estimated and 0 or 1,
                     (not estimated and tonumber(r[2]) >= 400) and 1 or 0, tonumber(r[7]),
                     tonumber(r[8]), tonumber(r[9] or '0'), cost, estimated and cost or 0}
    local audio = {tonumber(r[12] or '0'), tonumber(r[13] or '0')}
    local written = {}
    for _, tk in ipairs(totals) do
      add_up(tk, group, figures)
      written[#written + 1] = tk
      if audio[1] ~= 0 or audio[2] ~= 0 then  -- as redis_ledger.audio_totals names them
        add_up(tk .. ':audio', group, audio)
        written[#written + 1] = tk .. ':audio'
      end
    end
    local ttl = math.ceil(((z + 1) * 86400 - tonumber(at)) * 1000) + keep
    if keep > 0 then
      for _, tk in ipairs(written) do redis.call('PEXPIRE', tk, string.format('%d', ttl)) end
    end
    redis.call('HSET', hk, 'rolled', '1')
  end
  if at == last then same = same + 1 else last, same = at, 1 end
end
return {#page / 2, last, same}
"""

# Read records for a summary: one JSON text for them all, which Python parses at C speed
# (as RESP, each value is a reply that redis-py parses in Python: ~100 us a record).
# KEYS: the records' hashes. ARGV: the fields to read.
# Returns a JSON array: per record, its fields' values (false where it has none).
READ_RECORDS = """
local out = {}
for i = 1, #KEYS do out[i] = redis.call('HMGET', KEYS[i], unpack(ARGV)) end
return cjson.encode(out)
"""
