-- Refunds as one function, so every path that gives credits back (a finished job, a cancel, a failure)
-- writes the ledger row and the cached balance the same way, in whatever statement it runs in.
CREATE FUNCTION image.refund(p_user_id bigint, p_amount integer, p_generation_id text) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO image.credit_ledger (user_id, delta, reason, generation_id, idempotency_key)
    SELECT p_user_id, p_amount, 'refund', p_generation_id, 'refund:' || p_generation_id
    WHERE p_amount > 0;
    UPDATE image.users SET balance = balance + p_amount WHERE id = p_user_id AND p_amount > 0;
$$;
