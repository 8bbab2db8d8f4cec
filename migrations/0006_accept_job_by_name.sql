-- Accepting a request with the job as one jsonb argument, read by column name: an option added to the
-- request is a column here and a field in bot/core/models.Request, and this function takes it as it is.
-- What it does is what image.accept_from_identity and image.accept_request (migrations/0003-0005) did, in
-- one function: find or create the user (image.ensure_user: the welcome grant, once), lock them, check
-- the idempotency key, the limits and the balance, reserve the cost and record the job, atomically. One
-- user's requests queue on the row lock, so the counts are exact; in a plpgsql function every statement
-- after the lock reads a fresh snapshot (READ COMMITTED), so it sees the request it waited for.
CREATE FUNCTION image.accept_job(
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
    SELECT u.balance INTO v_balance FROM image.users u WHERE u.id = v_user_id FOR UPDATE;
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
        UPDATE image.users u SET balance = u.balance - v_cost
        WHERE u.id = v_user_id AND u.balance >= v_cost
        RETURNING u.balance INTO v_balance;
        INSERT INTO image.credit_ledger (user_id, delta, reason, generation_id, idempotency_key)
        VALUES (v_user_id, -v_cost, 'reserve', v_id, 'reserve:' || coalesce(v_key, v_id));
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

DROP FUNCTION image.accept_from_identity(
    text, text, text, integer, text, integer, integer, integer, text, text, text, text, text, smallint, bigint,
    text, text, text, text[], text, text, text, jsonb);
DROP FUNCTION image.accept_request(
    bigint, text, integer, integer, integer, text, text, text, text, text, smallint, bigint, text, text, text,
    text[], text, text, text, jsonb);
