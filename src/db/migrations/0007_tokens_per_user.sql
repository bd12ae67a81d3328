-- Each user's tokens, newest first: issuing a token retires that user's oldest beyond
-- `[api] max_tokens_per_user`, which keeps the table bounded.
CREATE INDEX tokens_user_issued ON tokens(user_id, issued_at);
