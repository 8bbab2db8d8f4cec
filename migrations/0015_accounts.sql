-- One account across platforms. An account holds the balance; each platform identity (image.users) belongs
-- to one; linking two identities moves one account's identities and balance into the other. Every
-- existing user gets an account of its own with the same id and its balance, so credits and history stay.
-- The ledger records the account each row counted against (the user stays: who caused it), so an
-- account's balance is the sum of its ledger rows, before and after a link.
CREATE TABLE image.accounts (
    id         bigserial PRIMARY KEY,
    balance    integer     NOT NULL DEFAULT 0 CHECK (balance >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO image.accounts (id, balance, created_at) SELECT id, balance, created_at FROM image.users;
SELECT setval(pg_get_serial_sequence('image.accounts', 'id'), coalesce(max(id), 0) + 1, false) FROM image.accounts;

ALTER TABLE image.users ADD COLUMN account_id bigint REFERENCES image.accounts (id);
UPDATE image.users SET account_id = id;
ALTER TABLE image.users ALTER COLUMN account_id SET NOT NULL;
CREATE INDEX users_account_idx ON image.users (account_id);

ALTER TABLE image.credit_ledger ADD COLUMN account_id bigint REFERENCES image.accounts (id);
UPDATE image.credit_ledger SET account_id = user_id;
ALTER TABLE image.credit_ledger ALTER COLUMN account_id SET NOT NULL;
CREATE INDEX credit_ledger_account_idx ON image.credit_ledger (account_id, id DESC);

-- One-time codes that join two identities (only their SHA-256 is kept: a database reader can't use one).
CREATE TABLE image.link_codes (
    code_hash  text PRIMARY KEY,
    user_id    bigint      NOT NULL REFERENCES image.users (id),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz,
    used_by    bigint REFERENCES image.users (id)
);

-- Every link made, so an operator can see and undo one (README: "Linked accounts").
CREATE TABLE image.account_links (
    id           bigserial PRIMARY KEY,
    into_account bigint      NOT NULL REFERENCES image.accounts (id),
    from_account bigint      NOT NULL REFERENCES image.accounts (id),
    moved        integer     NOT NULL,   -- the credits the from-account brought
    user_ids     bigint[]    NOT NULL,   -- the identities that moved
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The account that pays for a user, locked for the rest of the transaction. A link moving the user
-- between reading its account and locking it is seen on the re-read (the link held that lock), and the
-- new account is locked instead: a charge or refund never lands on an account the user has left.
CREATE FUNCTION image.lock_account(p_user_id bigint) RETURNS TABLE (r_account_id bigint, r_balance integer)
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
    v_balance integer;
BEGIN
    LOOP
        SELECT u.account_id INTO v_account FROM image.users u WHERE u.id = p_user_id;
        SELECT a.balance INTO v_balance FROM image.accounts a WHERE a.id = v_account FOR UPDATE;
        EXIT WHEN v_account = (SELECT u.account_id FROM image.users u WHERE u.id = p_user_id);
    END LOOP;
    RETURN QUERY SELECT v_account, v_balance;
END
$$;

-- As in migrations/0002, on the user's account.
CREATE OR REPLACE FUNCTION image.refund(p_user_id bigint, p_amount integer, p_generation_id text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_account bigint;
BEGIN
    IF p_amount <= 0 THEN
        RETURN;
    END IF;
    SELECT l.r_account_id INTO v_account FROM image.lock_account(p_user_id) l;
    INSERT INTO image.credit_ledger (user_id, account_id, delta, reason, generation_id, idempotency_key)
    VALUES (p_user_id, v_account, p_amount, 'refund', p_generation_id, 'refund:' || p_generation_id);
    UPDATE image.accounts SET balance = balance + p_amount WHERE id = v_account;
END
$$;

-- As in migrations/0005: a new user comes with an account of its own (the welcome grant goes there);
-- the balance returned is the account's.
CREATE OR REPLACE FUNCTION image.ensure_user(
    p_platform text, p_platform_user_id text, p_display_name text, p_starting_credits integer
) RETURNS TABLE (r_user_id bigint, r_balance integer) LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_account bigint;
    v_name text;
    v_balance integer;
BEGIN
    SELECT u.id, u.display_name, a.balance INTO v_user_id, v_name, v_balance
    FROM image.users u JOIN image.accounts a ON a.id = u.account_id
    WHERE u.platform = p_platform AND u.platform_user_id = p_platform_user_id;
    IF v_user_id IS NULL THEN
        INSERT INTO image.accounts DEFAULT VALUES RETURNING id INTO v_account;
        -- A concurrent first request of the same user makes this wait for it, then do nothing.
        INSERT INTO image.users AS u (platform, platform_user_id, display_name, account_id)
        VALUES (p_platform, p_platform_user_id, p_display_name, v_account)
        ON CONFLICT (platform, platform_user_id) DO NOTHING
        RETURNING u.id INTO v_user_id;
        IF v_user_id IS NOT NULL THEN
            v_name := p_display_name;
            v_balance := 0;
            IF p_starting_credits > 0 THEN
                INSERT INTO image.credit_ledger (user_id, account_id, delta, reason, idempotency_key)
                VALUES (v_user_id, v_account, p_starting_credits, 'welcome', 'welcome:' || v_user_id);
                UPDATE image.accounts a SET balance = a.balance + p_starting_credits WHERE a.id = v_account
                RETURNING a.balance INTO v_balance;
            END IF;
        ELSE
            DELETE FROM image.accounts WHERE id = v_account;  -- the other request's account stands
            -- Each statement here reads a fresh snapshot: the row the other request committed is visible.
            SELECT u.id, u.display_name, a.balance INTO v_user_id, v_name, v_balance
            FROM image.users u JOIN image.accounts a ON a.id = u.account_id
            WHERE u.platform = p_platform AND u.platform_user_id = p_platform_user_id;
        END IF;
    END IF;
    IF p_display_name <> '' AND v_name IS DISTINCT FROM p_display_name THEN
        UPDATE image.users u SET display_name = p_display_name WHERE u.id = v_user_id;
    END IF;
    RETURN QUERY SELECT v_user_id, v_balance;
END
$$;

-- As in migrations/0006, locking and charging the user's account (the limits stay per identity).
CREATE OR REPLACE FUNCTION image.accept_job(
    p_platform text, p_platform_user_id text, p_display_name text, p_starting_credits integer,
    p_queued_limit integer, p_per_minute integer,
    p_job jsonb  -- the image.generations row, by column name, without the user and what has defaults
) RETURNS TABLE (
    r_user_id bigint,
    r_outcome text,  -- accepted | duplicate | too_busy | too_fast | insufficient
    r_balance integer, r_active bigint, r_retry_in integer, r_ahead bigint, r_existing text,
    r_created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_account_id bigint;
    v_key text := p_job->>'idempotency_key';
    v_cost integer := (p_job->>'credits_reserved')::integer;
    v_id text := p_job->>'id';
    v_balance integer;
    v_active bigint;
    v_recent bigint;
    v_retry integer;
    v_ahead bigint;
    v_existing text;
    v_created timestamptz;
BEGIN
    SELECT e.r_user_id INTO v_user_id
    FROM image.ensure_user(p_platform, p_platform_user_id, p_display_name, p_starting_credits) e;
    SELECT l.r_account_id, l.r_balance INTO v_account_id, v_balance FROM image.lock_account(v_user_id) l;
    IF v_key IS NOT NULL THEN
        SELECT g.id INTO v_existing FROM image.generations g WHERE g.idempotency_key = v_key;
        IF v_existing IS NOT NULL THEN
            RETURN QUERY SELECT v_user_id, 'duplicate', v_balance, 0::bigint, 0, 0::bigint, v_existing,
                                NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO v_active FROM image.generations g
    WHERE g.user_id = v_user_id AND g.status IN ('queued', 'running');
    IF v_active >= p_queued_limit THEN
        RETURN QUERY SELECT v_user_id, 'too_busy', v_balance, v_active, 0, 0::bigint, NULL::text,
                            NULL::timestamptz;
        RETURN;
    END IF;
    SELECT count(*), ceil(extract(epoch FROM min(g.created_at) + interval '1 minute' - now()))::integer
    INTO v_recent, v_retry
    FROM image.generations g WHERE g.user_id = v_user_id AND g.created_at > now() - interval '1 minute';
    IF v_recent >= p_per_minute THEN
        RETURN QUERY SELECT v_user_id, 'too_fast', v_balance, v_active, greatest(1, coalesce(v_retry, 1)),
                            0::bigint, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_balance < v_cost THEN
        RETURN QUERY SELECT v_user_id, 'insufficient', v_balance, v_active, 0, 0::bigint, NULL::text,
                            NULL::timestamptz;
        RETURN;
    END IF;
    SELECT count(*) INTO v_ahead FROM image.generations g WHERE g.status = 'queued';
    IF v_cost > 0 THEN
        UPDATE image.accounts a SET balance = a.balance - v_cost
        WHERE a.id = v_account_id AND a.balance >= v_cost
        RETURNING a.balance INTO v_balance;
        INSERT INTO image.credit_ledger (user_id, account_id, delta, reason, generation_id, idempotency_key)
        VALUES (v_user_id, v_account_id, -v_cost, 'reserve', v_id, 'reserve:' || coalesce(v_key, v_id));
    END IF;
    -- Missing keys would be NULLs, not the columns' defaults: those without a value given are set here.
    INSERT INTO image.generations
    SELECT * FROM jsonb_populate_record(
        NULL::image.generations,
        '{"status": "queued", "warnings": [], "credits_refunded": 0, "reply_context": {}, "attempts": 0}'::jsonb
        || p_job || jsonb_build_object('user_id', v_user_id, 'created_at', now()))
    RETURNING created_at INTO v_created;
    RETURN QUERY SELECT v_user_id, 'accepted', v_balance, v_active, 0, v_ahead, NULL::text, v_created;
END
$$;

-- The balance lives on the account now.
ALTER TABLE image.users DROP COLUMN balance;
