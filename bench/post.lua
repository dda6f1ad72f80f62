-- wrk script: POST a rotating set of JSON bodies (one per line of the file given after `--`),
-- count response statuses, and print one machine-readable line when done:
--   BENCH_JSON {"requests": ..., "duration_s": ..., "latency_ms": {...}, "statuses": {...}, ...}
-- A script that loads this one with dofile may define extra_json(threads), returning a JSON
-- object as a string, to add its own counts to that line as "extra" (bench/overload.lua does).

local requests = {}
local index = 0
statuses = {} -- global, so that done() can read it from each thread with thread:get

function init(args)
  local path = args[1]
  assert(path, "usage: wrk ... -s post.lua URL -- BODIES_FILE")
  local headers = { ["Content-Type"] = "application/json" }
  for line in io.lines(path) do
    if #line > 0 then
      requests[#requests + 1] = wrk.format("POST", nil, headers, line)
    end
  end
  assert(#requests > 0, "no bodies in " .. path)
end

function request()
  index = index % #requests + 1
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, _)
  local counts, parts = {}, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses") or {}) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local pct = {}
  for _, p in ipairs({ 50, 90, 99, 99.9 }) do
    pct[#pct + 1] = string.format('"p%s": %.4f', tostring(p), latency:percentile(p) / 1000)
  end
  local e = summary.errors
  local extra = type(extra_json) == "function" and extra_json(threads) or "{}"
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_s": %.6f, "bytes": %d, '
      .. '"latency_ms": {%s, "mean": %.4f, "max": %.4f}, "statuses": {%s}, '
      .. '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, '
      .. '"extra": %s}\n',
    summary.requests, summary.duration / 1e6, summary.bytes,
    table.concat(pct, ", "), latency.mean / 1000, latency.max / 1000, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout, extra
  ))
end
