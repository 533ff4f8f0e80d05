-- Sends GET /v2/org-jobs/{id} for N generated job ids, so that a million
-- ids need no list in memory: with a Lua table of a million distinct
-- strings, LuaJIT's garbage collector stalls wrk for up to 100 ms at a
-- time, which shows as p99 latency of the server under test.
--
-- Script arguments: wrk ... -s script.lua URL -- N SEED ORDER [COUNT MARKER]
-- Job i (0 <= i < N) of family SEED always has the same version 4 UUID,
-- and the N ids of a family are distinct. ORDER "sequential" sends job 0,
-- 1, 2, ...; "shuffled" sends job (a * k) mod N at step k, with a coprime
-- to N, which visits every job once per N requests. After N requests the
-- walk starts again.

local bit = require("bit")
local band, bxor, rshift, lshift = bit.band, bit.bxor, bit.rshift, bit.lshift
local tobit = bit.tobit

local job_count = 0
local seeds = {}
local stride = 1
local step = 0

-- The low 32 bits of a * b for 0 <= a, b < 2^32. Each partial product
-- stays below 2^48, so doubles hold it exactly and bit.tobit wraps it.
local function mul32(a, b)
    local low = band(a, 0xffff) * b
    local high = lshift(tobit(rshift(a, 16) * b), 16)
    return tobit(low + high)
end

-- MurmurHash3's 32-bit finalizer: a bijection on 32-bit values, so
-- distinct inputs give distinct outputs.
local function mix32(h)
    h = bxor(h, rshift(h, 16))
    h = mul32(band(h, 0xffffffff) % 4294967296, 0x85ebca6b)
    h = bxor(h, rshift(h, 13))
    h = mul32(band(h, 0xffffffff) % 4294967296, 0xc2b2ae35)
    return bxor(h, rshift(h, 16))
end

-- The first group is mix32(i xor seed), which differs for every i, so the
-- ids of one family are distinct. One string.format call keeps the
-- client's cost per request low.
local function job_id(i)
    local w0 = mix32(bxor(i, seeds[1])) % 4294967296
    local w1 = mix32(bxor(i, seeds[2])) % 4294967296
    local w2 = mix32(bxor(i, seeds[3])) % 4294967296
    local w3 = mix32(bxor(i, seeds[4])) % 4294967296
    return string.format("%08x-%04x-4%03x-%04x-%04x%08x", w0,
                         math.floor(w1 / 65536), w1 % 4096,
                         0x8000 + math.floor(w2 / 65536) % 0x4000,
                         w2 % 65536, w3)
end

local function gcd(a, b)
    while b ~= 0 do
        a, b = b, a % b
    end
    return a
end

function init(args)
    job_count = tonumber(args[1])
    local seed = tonumber(args[2])
    for k = 1, 4 do
        seeds[k] = mix32(seed * 4 + k)
    end
    if args[3] == "shuffled" then
        -- About 0.618 N, so that neighbouring steps land far apart. The
        -- loop ends at the latest at a = N + 1, which is coprime to N.
        stride = math.floor(job_count * 0.618) + 1
        while gcd(stride, job_count) ~= 1 do
            stride = stride + 1
        end
    end
end

function request()
    -- stride * step < N^2, exact in a double for N up to 9e7.
    local i = (stride * step) % job_count
    step = (step + 1) % job_count
    return wrk.format(nil, "/v2/org-jobs/" .. job_id(i))
end
