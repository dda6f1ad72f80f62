-- wrk script for bench/generation.py, built on post.lua: POSTs the completion bodies of the file
-- given after `--` (one per line) and adds the generated tokens (from each answer's `usage`) to
-- post.lua's BENCH_JSON line.
--   wrk ... -s generation.lua URL/v1/completions -- BODIES_FILE

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "post.lua")

tokens = 0 -- global, for thread:get
local count_status = response

function response(status, headers, body)
  count_status(status, headers, body)
  local n = body and body:match('"completion_tokens":(%d+)')
  if n then
    tokens = tokens + tonumber(n)
  end
end

function extra_json(threads)
  local total = 0
  for _, thread in ipairs(threads) do
    total = total + (thread:get("tokens") or 0)
  end
  return string.format('{"tokens": %d}', total)
end
