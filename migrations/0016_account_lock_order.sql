-- One order for every lock on accounts, so a /link, a charge, a refund and a purchase on the same accounts
-- at once never deadlock: a transaction locks all the accounts it needs in one go, in ascending id order,
-- before it changes an existing image.users row. Three paths broke that order (migration 0015):
-- - Following a link. A transaction that waited for an account a link was emptying kept that lock, then
--   locked the user's new account, even when its id was the lower (image.lock_account, and the link's own
--   pair in bot/core/accounts.py); three links in a ring, or a link and a charge, waited on each other.
-- - image.accept_job wrote the display name (locking the user's row) before locking the account, while a
--   link locks the account and then moves the account's users.
-- - A batch of refunds (bot/core/queue.py) locked its users' accounts one by one, in the users' order.

-- The accounts that pay for these users, locked for the rest of the transaction. If a link moved one of
-- the users while this waited, what it locked is let go (the block is a subtransaction) and it starts over.
CREATE FUNCTION image.lock_accounts(p_user_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_accounts bigint[];
BEGIN
    IF coalesce(cardinality(p_user_ids), 0) = 0 THEN
        RETURN;  -- nothing to lock (a batch without refunds): not even the subtransaction
    END IF;
    LOOP
        BEGIN
            SELECT array_agg(DISTINCT u.account_id ORDER BY u.account_id) INTO v_accounts
            FROM image.users u WHERE u.id = ANY (p_user_ids);
            PERFORM 1 FROM image.accounts a WHERE a.id = ANY (v_accounts) ORDER BY a.id FOR UPDATE;
            -- Each statement reads a fresh snapshot: a link that committed meanwhile is seen here.
            IF v_accounts IS NOT DISTINCT FROM (
                SELECT array_agg(DISTINCT u.account_id ORDER BY u.account_id)
                FROM image.users u WHERE u.id = ANY (p_user_ids)
            ) THEN
                RETURN;
            END IF;
            RAISE SQLSTATE 'IBMOV' USING MESSAGE = 'a user moved to another account while it was being locked';
        EXCEPTION WHEN SQLSTATE 'IBMOV' THEN
            NULL;  -- rolled back to the block's start: its locks are let go
        END;
    END LOOP;
END
$$;

-- As in migrations/0015, through image.lock_accounts.
CREATE OR REPLACE FUNCTION image.lock_account(p_user_id bigint) RETURNS TABLE (r_account_id bigint, r_balance integer)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM image.lock_accounts(ARRAY[p_user_id]);
    RETURN QUERY SELECT a.id, a.balance FROM image.users u JOIN image.accounts a ON a.id = u.account_id
                 WHERE u.id = p_user_id;
END
$$;

-- As in migrations/0015, with the display name written after the account is locked.
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
    -- No display name yet: writing it would lock the user's row before the account.
    SELECT e.r_user_id INTO v_user_id FROM image.ensure_user(p_platform, p_platform_user_id, '', p_starting_credits) e;
    SELECT l.r_account_id, l.r_balance INTO v_account_id, v_balance FROM image.lock_account(v_user_id) l;
    IF p_display_name <> '' THEN
        UPDATE image.users u SET display_name = p_display_name
        WHERE u.id = v_user_id AND u.display_name IS DISTINCT FROM p_display_name;
    END IF;
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
