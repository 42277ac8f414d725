-- wrk script for bench/ingest.py --route bot: every request is a POST
-- /v1/salebot/events/started for a subscriber never seen before (distinct client_id,
-- telegram_id and id), as a bot's first block sends it: form-encoded strings.
--
-- Arguments (after `--` on wrk's command line): TOKEN [STRIDE]

local next_thread = 0

function setup(thread)
    thread:set("thread_id", next_thread)
    next_thread = next_thread + 1
end

function init(args)
    path = "/v1/salebot/events/started?token=" .. args[1]
    local stride = tonumber(args[2]) or 1000000000
    counter = (thread_id + 1) * stride
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
end

function request()
    counter = counter + 1
    local body = string.format(
        "client_id=%d&telegram_id=%d&id=s%d&start=vk_ads&utm_source=vk&utm_campaign=autumn",
        counter, counter, counter
    )
    return wrk.format("POST", path, headers, body)
end
