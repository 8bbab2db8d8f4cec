-- What the bot took from a platform (a Telegram update, a deferred Discord interaction), written down before
-- the platform is told it arrived (the next polling offset, the webhook's 200), so a crash cannot lose it.
-- A handler claims an entry before handling it (one claim at a time; a claim left by a crash runs out) and
-- marks it handled after; handled entries are trimmed after a day.
CREATE TABLE image.inbox (
    platform      text        NOT NULL,
    event_id      text        NOT NULL,
    payload       jsonb       NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    claimed_by    text,
    claimed_until timestamptz,
    handled_at    timestamptz,
    PRIMARY KEY (platform, event_id)
);
CREATE INDEX inbox_unhandled_idx ON image.inbox (platform, received_at) WHERE handled_at IS NULL;
CREATE INDEX inbox_handled_idx ON image.inbox (handled_at) WHERE handled_at IS NOT NULL;
