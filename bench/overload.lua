-- wrk script for bench/overload.py, built on post.lua (its status counts and BENCH_JSON line).
-- Rotates requests read from the file given after `--`, one per line:
--   EXPECTED_STATUS <TAB> METHOD <TAB> PATH <TAB> BODY
-- and adds to post.lua's line: requests sent per expected status, and 503s without Retry-After.
--   wrk ... -s overload.lua URL -- FILE [TIMEOUT_MS]
-- TIMEOUT_MS, when given, is sent as X-Request-Timeout-Ms with every request.

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

local requests, expected = {}, {}
local index = 0
sent = {} -- global, for thread:get: requests sent, by the status their body should get
no_retry_after = 0 -- global: 503 answers without a Retry-After header

function init(args)
  local path, timeout_ms = args[1], args[2]
  assert(path, "usage: wrk ... -s overload.lua URL -- FILE [TIMEOUT_MS]")
  local headers = { ["Content-Type"] = "application/json" }
  if timeout_ms then
    headers["X-Request-Timeout-Ms"] = timeout_ms
  end
  for line in io.lines(path) do
    local status, method, target, body = line:match("^(%d+)\t(%u+)\t([^\t]+)\t(.*)$")
    if status then
      if method == "GET" then
        body = nil
      end
      requests[#requests + 1] = wrk.format(method, target, headers, body)
      expected[#requests] = tonumber(status)
    end
  end
  assert(#requests > 0, "no requests in " .. path)
end

function request()
  index = index % #requests + 1
  local status = expected[index]
  sent[status] = (sent[status] or 0) + 1
  return requests[index]
end

local function has_header(headers, wanted)
  for name, _ in pairs(headers) do
    if string.lower(name) == wanted then
      return true
    end
  end
  return false
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 503 and not has_header(headers, "retry-after") then
    no_retry_after = no_retry_after + 1
  end
end

function extra_json(threads)
  local by_status, missing, parts = {}, 0, {}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("sent") or {}) do
      by_status[status] = (by_status[status] or 0) + n
    end
    missing = missing + (thread:get("no_retry_after") or 0)
  end
  for status, n in pairs(by_status) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  return string.format(
    '{"sent_by_expected_status": {%s}, "503_without_retry_after": %d}',
    table.concat(parts, ", "), missing
  )
end
