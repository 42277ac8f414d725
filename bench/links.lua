-- wrk script for bench/ingest.py: every request is a POST /v1/links for a person never seen
-- before (distinct email, telegram_id and client_id), so each one is a real insert.
--
-- Arguments (after `--` on wrk's command line): TOKEN [STRIDE]
-- Thread k (0-based) numbers its people (k + 1) * STRIDE + 1, + 2, ...; the connections of
-- one thread share its counter (a thread runs its connections on one event loop).

local next_thread = 0

function setup(thread)
    thread:set("thread_id", next_thread)
    next_thread = next_thread + 1
end

function init(args)
    path = "/v1/links?token=" .. args[1]
    local stride = tonumber(args[2]) or 1000000000
    counter = (thread_id + 1) * stride
    headers = { ["Content-Type"] = "application/json" }
end

function request()
    counter = counter + 1
    local body = string.format(
        '{"email": "u%d@bench-school.ru", "telegram_id": "%d", "client_id": "%d"}',
        counter, counter, counter
    )
    return wrk.format("POST", path, headers, body)
end
