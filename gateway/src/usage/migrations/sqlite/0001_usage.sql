-- One row per request (raw), kept for the retention horizon.
CREATE TABLE IF NOT EXISTS usage_requests (
    id INTEGER PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    node TEXT NOT NULL,
    key_name TEXT,
    end_user TEXT,
    model TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    status BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    ttft_ms DOUBLE PRECISION,
    duration_ms DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_requests_at ON usage_requests (at_ms);

-- Rows past the horizon, summed per day (days since 1970-01-01, UTC) x key x user x model.
-- '' stands for "none" so the key is a plain primary key.
CREATE TABLE IF NOT EXISTS usage_daily (
    day BIGINT NOT NULL,
    key_name TEXT NOT NULL,
    end_user TEXT NOT NULL,
    model TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (day, key_name, end_user, model)
);
