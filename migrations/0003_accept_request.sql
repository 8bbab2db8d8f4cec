-- Accepting a request in one round trip: lock the user, check the idempotency key, the limits and the
-- balance, reserve the cost and record the job, atomically. One user's requests queue on the row lock,
-- so the counts are exact; in a plpgsql function every statement after the lock reads a fresh snapshot
-- (READ COMMITTED), so it sees the request it waited for.
CREATE FUNCTION image.accept_request(
    p_user_id bigint, p_key text, p_cost integer, p_queued_limit integer, p_per_minute integer,
    p_id text, p_prompt text, p_negative_prompt text, p_model text, p_aspect_ratio text, p_count smallint,
    p_seed bigint, p_kind text, p_parent_generation_id text, p_parent_image_id text, p_warnings text[],
    p_platform text, p_chat_id text, p_message_id text, p_reply_context jsonb
) RETURNS TABLE (
    r_outcome text,  -- accepted | duplicate | too_busy | too_fast | insufficient
    r_balance integer, r_active bigint, r_retry_in integer, r_ahead bigint, r_existing text,
    r_created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_balance integer;
    v_active bigint;
    v_recent bigint;
    v_retry integer;
    v_ahead bigint;
    v_existing text;
    v_created timestamptz;
BEGIN
    SELECT u.balance INTO v_balance FROM image.users u WHERE u.id = p_user_id FOR UPDATE;
    IF p_key IS NOT NULL THEN
        SELECT g.id INTO v_existing FROM image.generations g WHERE g.idempotency_key = p_key;
        IF v_existing IS NOT NULL THEN
            RETURN QUERY SELECT 'duplicate', v_balance, 0::bigint, 0, 0::bigint, v_existing, NULL::timestamptz;
            RETURN;
        END IF;
    END IF;
    SELECT count(*) INTO v_active FROM image.generations g
    WHERE g.user_id = p_user_id AND g.status IN ('queued', 'running');
    IF v_active >= p_queued_limit THEN
        RETURN QUERY SELECT 'too_busy', v_balance, v_active, 0, 0::bigint, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT count(*), ceil(extract(epoch FROM min(g.created_at) + interval '1 minute' - now()))::integer
    INTO v_recent, v_retry
    FROM image.generations g WHERE g.user_id = p_user_id AND g.created_at > now() - interval '1 minute';
    IF v_recent >= p_per_minute THEN
        RETURN QUERY SELECT 'too_fast', v_balance, v_active, greatest(1, coalesce(v_retry, 1)), 0::bigint,
                            NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    IF v_balance < p_cost THEN
        RETURN QUERY SELECT 'insufficient', v_balance, v_active, 0, 0::bigint, NULL::text, NULL::timestamptz;
        RETURN;
    END IF;
    SELECT count(*) INTO v_ahead FROM image.generations g WHERE g.status = 'queued';
    IF p_cost > 0 THEN
        UPDATE image.users u SET balance = u.balance - p_cost
        WHERE u.id = p_user_id AND u.balance >= p_cost
        RETURNING u.balance INTO v_balance;
        INSERT INTO image.credit_ledger (user_id, delta, reason, generation_id, idempotency_key)
        VALUES (p_user_id, -p_cost, 'reserve', p_id, 'reserve:' || coalesce(p_key, p_id));
    END IF;
    INSERT INTO image.generations AS g (
        id, user_id, prompt, negative_prompt, model, aspect_ratio, count, seed, kind,
        parent_generation_id, parent_image_id, warnings, credits_reserved, idempotency_key,
        platform, chat_id, message_id, reply_context)
    VALUES (
        p_id, p_user_id, p_prompt, p_negative_prompt, p_model, p_aspect_ratio, p_count, p_seed, p_kind,
        p_parent_generation_id, p_parent_image_id, p_warnings, p_cost, p_key,
        p_platform, p_chat_id, p_message_id, p_reply_context)
    RETURNING g.created_at INTO v_created;
    RETURN QUERY SELECT 'accepted', v_balance, v_active, 0, v_ahead, NULL::text, v_created;
END
$$;
