-- Optional multi-tenant BI: a reader role sees only the accounts granted to it.
-- The policy is inert until row-level security is enabled on `calls`
-- (`PgStore::enable_row_level_security`, or `row_level_security = true` in the
-- sink config). The table owner (the sink) is not subject to it.
CREATE TABLE IF NOT EXISTS callsync_account_grants (
    role_name  text NOT NULL,
    provider   text NOT NULL,
    account_id text NOT NULL,
    PRIMARY KEY (role_name, provider, account_id)
);

DROP POLICY IF EXISTS calls_granted_accounts ON calls;
CREATE POLICY calls_granted_accounts ON calls
    FOR SELECT
    USING (EXISTS (
        SELECT 1 FROM callsync_account_grants g
        WHERE g.role_name = current_user
          AND g.provider = calls.provider
          AND g.account_id = calls.account_id
    ));
