-- Credits people buy. A purchase is one ledger row (reason 'purchase') keyed by the platform's charge or
-- entitlement id, and one row here keyed the same way: a replayed payment event finds it and credits
-- nothing. Taking a purchase back is a ledger row of its own reason, 'purchase_refund' (a job's refund
-- stays 'refund'); it takes back at most the balance, and what it could not take is kept here (shortfall).
ALTER TABLE image.credit_ledger DROP CONSTRAINT credit_ledger_reason_check;
ALTER TABLE image.credit_ledger ADD CONSTRAINT credit_ledger_reason_check
    CHECK (reason IN ('welcome', 'grant', 'revoke', 'reserve', 'refund', 'purchase', 'purchase_refund', 'link'));

-- What the bot offered a user to pay for (a Telegram invoice's payload names one): a payment must name an
-- order the bot issued, to this user, for a pack at this price.
CREATE TABLE image.orders (
    id         text PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES image.users (id),
    platform   text        NOT NULL,
    pack       text        NOT NULL,
    credits    integer     NOT NULL CHECK (credits > 0),
    price      integer     NOT NULL CHECK (price > 0),
    currency   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE image.purchases (
    id            bigserial PRIMARY KEY,
    platform      text        NOT NULL,
    charge_id     text        NOT NULL,   -- telegram_payment_charge_id, or the Discord entitlement id
    user_id       bigint      NOT NULL REFERENCES image.users (id),
    order_id      text REFERENCES image.orders (id),
    pack          text        NOT NULL,
    credits       integer     NOT NULL CHECK (credits > 0),
    price         integer,               -- in the currency's units (Stars); unknown for a Discord SKU
    currency      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    refunded_at   timestamptz,
    taken_back    integer     NOT NULL DEFAULT 0 CHECK (taken_back >= 0),
    shortfall     integer     NOT NULL DEFAULT 0 CHECK (shortfall >= 0),  -- refunded, but already spent
    UNIQUE (platform, charge_id)
);
CREATE INDEX purchases_user_idx ON image.purchases (user_id, created_at DESC);
CREATE INDEX purchases_created_idx ON image.purchases (created_at);
