-- Row-level security that holds (docs/security.md, "Postgres: row-level security").
--
-- A reader role sees the calls of the accounts granted to it in callsync_account_grants and
-- nothing else; it cannot read the grants table itself (nobody but its owner can). The policy
-- looks the grants up through a SECURITY DEFINER function that returns only the calling
-- role's own accounts. The table owner (the sink) keeps reading and writing every row even
-- when row-level security is FORCEd, through a policy of its own.
--
-- The policies are inert until `ALTER TABLE calls ENABLE ROW LEVEL SECURITY` (done, with
-- FORCE, by `callsync db migrate` and the sink when `[sink] row_level_security = true`).
-- Superusers and BYPASSRLS roles are never subject to them: the sink must not be one.

REVOKE ALL ON callsync_account_grants FROM PUBLIC;

-- The accounts of the calling role: the role set with SET ROLE, else the session's user
-- (inside a SECURITY DEFINER function current_user is the owner). Schema-qualified, with a
-- fixed search_path, so no other schema's objects can stand in for ours.
DO $migration$
BEGIN
    EXECUTE format(
        $function$
        CREATE OR REPLACE FUNCTION %1$I.callsync_reader_accounts()
        RETURNS TABLE (provider text, account_id text)
        LANGUAGE sql STABLE SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS 'SELECT g.provider, g.account_id FROM %1$I.callsync_account_grants g
            WHERE g.role_name = COALESCE(NULLIF(current_setting(''role''), ''none''), session_user)'
        $function$,
        current_schema());
END
$migration$;

REVOKE ALL ON FUNCTION callsync_reader_accounts() FROM PUBLIC;

DROP POLICY IF EXISTS calls_granted_accounts ON calls;
CREATE POLICY calls_granted_accounts ON calls
    FOR SELECT
    USING ((provider, account_id) IN (SELECT r.provider, r.account_id FROM callsync_reader_accounts() r));

-- The owner of `calls` (and the members of its role) read and write every row.
DROP POLICY IF EXISTS calls_owner ON calls;
CREATE POLICY calls_owner ON calls
    FOR ALL
    USING ((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = 'calls'::regclass))
    WITH CHECK ((SELECT pg_has_role(current_user, c.relowner, 'USAGE') FROM pg_class c WHERE c.oid = 'calls'::regclass));
