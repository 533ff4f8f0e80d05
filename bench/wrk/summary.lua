-- Prints wrk's summary as one JSON line for bench/bench.py: the response
-- and error counts, the run time and latency percentiles in microseconds.
-- bench.py puts this file in front of walk.lua or count.lua when it uses
-- them, because wrk loads a single script.

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,' ..
        '"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,' ..
        '"p999":%d,"mean":%.1f,"max":%d}}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9),
        latency.mean, latency.max))
end
