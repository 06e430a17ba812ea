-- wrk script of bench_proxy.py.
--   POWGATE_POOL=file      each request carries the next solution of the file (one per line)
--   POWGATE_SOLUTION=value every request carries this one header value
-- done() prints one machine-readable line: RESULT requests duration_us status_errors
-- socket_errors p50_us p99_us
local pool, count, index = {}, 0, 0
local pool_file = os.getenv("POWGATE_POOL")
if pool_file and pool_file ~= "" then
  for line in io.lines(pool_file) do
    count = count + 1
    pool[count] = line
  end
end
local fixed = os.getenv("POWGATE_SOLUTION")

if count > 0 then
  request = function()
    index = index + 1
    -- Past the end solutions repeat and are refused as replays: they show up
    -- as status errors, so an undersized pool cannot pass unnoticed.
    if index > count then index = 1 end
    return wrk.format(nil, nil, { ["X-Powgate-Solution"] = pool[index] })
  end
elseif fixed and fixed ~= "" then
  wrk.headers["X-Powgate-Solution"] = fixed
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %d %d %d %d %d\n", summary.requests, summary.duration,
    e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
