-- Versions of one call are ordered by (version, fingerprint): the content fingerprint of
-- the record last applied breaks ties between equal versions the same way the processor's
-- dedup does, and makes a replay of the same record a no-op (the upsert's WHERE skips it).
-- Rows written before this column existed get the lowest bigint: the fingerprint of the
-- record that wrote them is not known, and any record of the same version wins the tie
-- against it (once; its own fingerprint is then stored). Adding a column with a constant
-- default rewrites nothing.
ALTER TABLE calls ADD COLUMN IF NOT EXISTS fingerprint bigint NOT NULL
    DEFAULT -9223372036854775808;

-- A partial record (a webhook carrying only some fields) can create the row of a call
-- before any record has said when the call started.
ALTER TABLE calls ALTER COLUMN started_at DROP NOT NULL;
