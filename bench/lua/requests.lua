-- wrk script: rotate over a list of pre-built requests, print a JSON summary at the end.
--
-- Usage: wrk ... -s bench/lua/requests.lua URL -- REQUESTS_FILE
-- REQUESTS_FILE has one request per line, four tab-separated fields:
--   METHOD  PATH  AUTHORIZATION-or-empty  BODY-or-empty (one line of JSON)
-- The harness writes it (bench/load.py): bearer tokens spread over many users, POST bodies,
-- sign-in credentials. Each wrk thread starts at a different offset so threads do not march
-- over the same users in lockstep.

local requests = {}
local index = 0

local function split_tabs(line)
   local fields = {}
   local start = 1
   while true do
      local tab = string.find(line, "\t", start, true)
      if not tab then
         table.insert(fields, string.sub(line, start))
         return fields
      end
      table.insert(fields, string.sub(line, start, tab - 1))
      start = tab + 1
   end
end

local threads_set_up = 0
function setup(thread)
   thread:set("bench_thread_no", threads_set_up)
   threads_set_up = threads_set_up + 1
end

function init(args)
   local path = args[1]
   local file = assert(io.open(path, "r"), "cannot open requests file " .. tostring(path))
   for line in file:lines() do
      if line ~= "" then
         local f = split_tabs(line)
         local headers = {}
         local body = nil
         if f[3] ~= nil and f[3] ~= "" then
            headers["Authorization"] = f[3]
         end
         if f[4] ~= nil and f[4] ~= "" then
            body = f[4]
            headers["Content-Type"] = "application/json"
         end
         table.insert(requests, wrk.format(f[1], f[2], headers, body))
      end
   end
   file:close()
   assert(#requests > 0, "no requests in " .. path)
   index = ((tonumber(rawget(_G, "bench_thread_no")) or 0) * 7919) % #requests
end

function request()
   index = index + 1
   if index > #requests then
      index = 1
   end
   return requests[index]
end

function done(summary, latency, requests_)
   local e = summary.errors
   io.write(string.format(
      '\nBENCH-JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"p50":%.1f,"p99":%.1f,"max":%.1f}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
