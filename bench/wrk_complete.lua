-- wrk script: POST /v1/complete with one empty prompt and n = 1, as fast as wrk can.
--
-- The API key comes from the environment variable LOWRANK_API_KEY, so it stays out of
-- the process list.  Run it only against a server on the loopback address:
--
--   LOWRANK_API_KEY=bench-key wrk -t2 -c32 -d10s -s bench/wrk_complete.lua http://127.0.0.1:8000
--
-- The server needs limits that a 10-second run cannot reach (see bench/README.md).
-- Otherwise it returns 429, which wrk reports as "Non-2xx or 3xx responses".

local key = os.getenv("LOWRANK_API_KEY")
if key == nil or key == "" then
  error("set LOWRANK_API_KEY to a client key of the server under test")
end

wrk.method = "POST"
wrk.path = "/v1/complete"
wrk.body = '{"prompts": [[]], "n": 1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key
