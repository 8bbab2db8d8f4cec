-- One way a user comes to exist: image.ensure_user finds or creates them (with the welcome grant, once)
-- and keeps their display name current. Both the accepting call (image.accept_from_identity) and the
-- other commands (bot/core/credits.py, ensure_user) go through it; before, each had its own copy.
CREATE FUNCTION image.ensure_user(
    p_platform text, p_platform_user_id text, p_display_name text, p_starting_credits integer
) RETURNS TABLE (r_user_id bigint, r_balance integer) LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
    v_name text;
    v_balance integer;
BEGIN
    SELECT u.id, u.display_name, u.balance INTO v_user_id, v_name, v_balance
    FROM image.users u WHERE u.platform = p_platform AND u.platform_user_id = p_platform_user_id;
    IF v_user_id IS NULL THEN
        -- A concurrent first request of the same user makes this wait for it, then do nothing.
        INSERT INTO image.users AS u (platform, platform_user_id, display_name)
        VALUES (p_platform, p_platform_user_id, p_display_name)
        ON CONFLICT (platform, platform_user_id) DO NOTHING
        RETURNING u.id, u.balance INTO v_user_id, v_balance;
        IF v_user_id IS NOT NULL THEN
            v_name := p_display_name;
            IF p_starting_credits > 0 THEN
                INSERT INTO image.credit_ledger (user_id, delta, reason, idempotency_key)
                VALUES (v_user_id, p_starting_credits, 'welcome', 'welcome:' || v_user_id);
                UPDATE image.users u SET balance = u.balance + p_starting_credits WHERE u.id = v_user_id
                RETURNING u.balance INTO v_balance;
            END IF;
        ELSE
            -- Each statement here reads a fresh snapshot: the row the other request committed is visible.
            SELECT u.id, u.display_name, u.balance INTO v_user_id, v_name, v_balance
            FROM image.users u WHERE u.platform = p_platform AND u.platform_user_id = p_platform_user_id;
        END IF;
    END IF;
    IF p_display_name <> '' AND v_name IS DISTINCT FROM p_display_name THEN
        UPDATE image.users u SET display_name = p_display_name WHERE u.id = v_user_id;
    END IF;
    RETURN QUERY SELECT v_user_id, v_balance;
END
$$;

-- As in migrations/0004, with the user from image.ensure_user.
CREATE OR REPLACE FUNCTION image.accept_from_identity(
    p_platform text, p_platform_user_id text, p_display_name text, p_starting_credits integer,
    p_key text, p_cost integer, p_queued_limit integer, p_per_minute integer,
    p_id text, p_prompt text, p_negative_prompt text, p_model text, p_aspect_ratio text, p_count smallint,
    p_seed bigint, p_kind text, p_parent_generation_id text, p_parent_image_id text, p_warnings text[],
    p_destination_platform text, p_chat_id text, p_message_id text, p_reply_context jsonb
) RETURNS TABLE (
    r_user_id bigint,
    r_outcome text, r_balance integer, r_active bigint, r_retry_in integer, r_ahead bigint, r_existing text,
    r_created_at timestamptz
) LANGUAGE plpgsql AS $$
DECLARE
    v_user_id bigint;
BEGIN
    SELECT e.r_user_id INTO v_user_id
    FROM image.ensure_user(p_platform, p_platform_user_id, p_display_name, p_starting_credits) e;
    RETURN QUERY SELECT v_user_id, a.* FROM image.accept_request(
        v_user_id, p_key, p_cost, p_queued_limit, p_per_minute,
        p_id, p_prompt, p_negative_prompt, p_model, p_aspect_ratio, p_count, p_seed, p_kind,
        p_parent_generation_id, p_parent_image_id, p_warnings,
        p_destination_platform, p_chat_id, p_message_id, p_reply_context) a;
END
$$;
