-- Users, the credit ledger, generations and their images.
CREATE SCHEMA IF NOT EXISTS image;

-- One row per platform identity (a Discord user and a Telegram user are different rows).
CREATE TABLE image.users (
    id               bigserial PRIMARY KEY,
    platform         text        NOT NULL,
    platform_user_id text        NOT NULL,
    display_name     text        NOT NULL DEFAULT '',
    balance          integer     NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (platform, platform_user_id)
);

-- Append-only. users.balance is a cache of sum(delta), changed in the same transaction.
CREATE TABLE image.credit_ledger (
    id              bigserial PRIMARY KEY,
    user_id         bigint      NOT NULL REFERENCES image.users (id),
    delta           integer     NOT NULL,
    reason          text        NOT NULL CHECK (reason IN ('welcome', 'grant', 'revoke', 'reserve', 'refund')),
    generation_id   text,
    admin_id        bigint REFERENCES image.users (id),
    idempotency_key text        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_user_idx ON image.credit_ledger (user_id, id DESC);

CREATE TABLE image.generations (
    id               text PRIMARY KEY,            -- short random id, safe to show in button payloads
    user_id          bigint      NOT NULL REFERENCES image.users (id),
    prompt           text        NOT NULL,
    negative_prompt  text,
    model            text        NOT NULL,
    aspect_ratio     text        NOT NULL,
    count            smallint    NOT NULL CHECK (count BETWEEN 1 AND 4),
    seed             bigint      NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('imagine', 'regenerate', 'variation')),
    parent_generation_id text REFERENCES image.generations (id),
    parent_image_id  text,
    status           text        NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'succeeded', 'partial', 'failed', 'cancelled')),
    error_code       text,
    error_message    text,
    warnings         text[]      NOT NULL DEFAULT '{}',
    credits_reserved integer     NOT NULL DEFAULT 0 CHECK (credits_reserved >= 0),
    credits_refunded integer     NOT NULL DEFAULT 0 CHECK (credits_refunded >= 0),
    idempotency_key  text UNIQUE,
    -- Where the result goes.
    platform         text        NOT NULL,
    chat_id          text        NOT NULL,
    message_id       text,
    reply_context    jsonb       NOT NULL DEFAULT '{}',
    -- Durable job bookkeeping.
    attempts         integer     NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    delivered_at     timestamptz,
    deleted_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);
CREATE INDEX generations_user_history_idx ON image.generations (user_id, created_at DESC, id DESC)
    WHERE deleted_at IS NULL;
CREATE INDEX generations_queued_idx ON image.generations (created_at) WHERE status = 'queued';
CREATE INDEX generations_running_idx ON image.generations (user_id) WHERE status = 'running';
CREATE INDEX generations_active_idx ON image.generations (user_id) WHERE status IN ('queued', 'running');
CREATE INDEX generations_undelivered_idx ON image.generations (finished_at)
    WHERE delivered_at IS NULL AND status IN ('succeeded', 'partial', 'failed', 'cancelled');

CREATE TABLE image.images (
    id            text PRIMARY KEY,
    generation_id text        NOT NULL REFERENCES image.generations (id),
    index         smallint    NOT NULL,
    storage_key   text        NOT NULL,
    url           text        NOT NULL,
    mime_type     text        NOT NULL,
    width         integer     NOT NULL,
    height        integer     NOT NULL,
    bytes         integer     NOT NULL,
    seed          bigint,
    file_refs     jsonb       NOT NULL DEFAULT '{}',   -- e.g. {"telegram": "<file_id>"}
    created_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (generation_id, index)
);

ALTER TABLE image.generations
    ADD CONSTRAINT generations_parent_image_fk FOREIGN KEY (parent_image_id) REFERENCES image.images (id);
