-- Stops the thread after COUNT responses (fourth script argument) and
-- creates the file MARKER (fifth argument), the signal for bench.py to end
-- wrk, which otherwise waits out its whole -d duration. Defining response()
-- makes wrk parse every response's headers, so only bounded runs (cache
-- fills, profiles) load this file.

local limit = 0
local marker = nil
local responses = 0
local jobs_init = init

function init(args)
    if jobs_init ~= nil then
        jobs_init(args)
    end
    limit = tonumber(args[4])
    marker = args[5]
end

function response(status, headers, body)
    responses = responses + 1
    if responses == limit then
        local f = io.open(marker, "w")
        f:write(responses, "\n")
        f:close()
        wrk.thread:stop()
    end
end
