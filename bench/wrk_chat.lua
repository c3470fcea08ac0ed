-- wrk script for bench/run.py: POST a small chat completion with a bearer key.
--
-- wrk -t1 -c32 -d10s -s bench/wrk_chat.lua URL -- MODEL KEY [STREAM_EVERY]
--
-- STREAM_EVERY = n > 0 makes every n-th request a streaming one (the soak mixes both
-- paths so that a leak in either shows). done() prints one JSON line that run.py reads,
-- so nothing depends on the layout of wrk's human-readable summary.

local plain_body, stream_body
local stream_every = 0
local sent = 0

function init(args)
  local model = args[1] or "bench"
  local key = args[2] or "sk-aigw-dev"
  stream_every = tonumber(args[3] or "0") or 0
  local messages = '"messages":[{"role":"user","content":"Say hello to the benchmark."}]'
  plain_body = '{"model":"' .. model .. '",' .. messages .. ',"max_tokens":16}'
  stream_body = '{"model":"' .. model .. '",' .. messages
    .. ',"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}'
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  sent = sent + 1
  if stream_every > 0 and sent % stream_every == 0 then
    return wrk.format(nil, nil, nil, stream_body)
  end
  return wrk.format(nil, nil, nil, plain_body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"errors_connect":%d,"errors_read":%d,'
      .. '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,'
      .. '"p50_us":%d,"p95_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
