-- wrk script for bench_serving.py: POST one pre-built body on every request.
-- The body is read from the file named by $BENCH_BODY, its Content-Type from
-- $BENCH_CONTENT_TYPE. At the end one line "BENCH_JSON {...}" gives the counts and the latency
-- percentiles in microseconds, so the benchmark does not have to parse wrk's human output.

local body_file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
-- One extra header when asked (the Open Inference Protocol's Inference-Header-Content-Length).
local extra_name = os.getenv("BENCH_HEADER_NAME")
if extra_name ~= nil and extra_name ~= "" then
   wrk.headers[extra_name] = os.getenv("BENCH_HEADER_VALUE")
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, ' ..
      '"write": %d, "status": %d, "timeout": %d, "p50_us": %d, "p90_us": %d, ' ..
      '"p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
      summary.requests, summary.duration, errors.connect, errors.read, errors.write,
      errors.status, errors.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max))
end
