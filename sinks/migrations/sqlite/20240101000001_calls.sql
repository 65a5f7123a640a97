-- The embedded store: the same table and offsets as Postgres, in SQLite types.
-- Timestamps are RFC 3339 text (UTC, microseconds), money is decimal text,
-- tags are JSON text.
CREATE TABLE IF NOT EXISTS calls (
    provider            TEXT    NOT NULL,
    account_id          TEXT    NOT NULL,
    call_id             TEXT    NOT NULL,
    version             INTEGER NOT NULL,
    started_at          TEXT    NOT NULL,
    answered_at         TEXT,
    ended_at            TEXT,
    duration_secs       INTEGER,
    billable_secs       INTEGER,
    caller_number       TEXT,
    tracking_number     TEXT,
    destination_number  TEXT,
    campaign_id         TEXT,
    campaign_name       TEXT,
    publisher_id        TEXT,
    publisher_name      TEXT,
    buyer_id            TEXT,
    buyer_name          TEXT,
    status              TEXT    NOT NULL,
    provider_status     TEXT,
    converted           INTEGER,
    revenue             TEXT,
    payout              TEXT,
    currency            TEXT,
    recording_url       TEXT,
    tags                TEXT    NOT NULL DEFAULT '{}',
    source              TEXT    NOT NULL,
    observed_at         TEXT    NOT NULL,
    provider_updated_at TEXT,
    raw                 BLOB,
    kafka_topic         TEXT    NOT NULL,
    kafka_partition     INTEGER NOT NULL,
    kafka_offset        INTEGER NOT NULL,
    synced_at           TEXT    NOT NULL,
    PRIMARY KEY (provider, account_id, call_id),
    -- what numeric(18,4) holds in Postgres: at most 14 integer digits
    CHECK (revenue IS NULL OR abs(CAST(revenue AS REAL)) < 1e14),
    CHECK (payout IS NULL OR abs(CAST(payout AS REAL)) < 1e14)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS calls_account_started_at ON calls (account_id, started_at);
CREATE INDEX IF NOT EXISTS calls_campaign_started_at ON calls (campaign_id, started_at);

CREATE TABLE IF NOT EXISTS callsync_offsets (
    consumer_group TEXT    NOT NULL,
    topic          TEXT    NOT NULL,
    partition      INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL CHECK (next_offset >= 0),
    updated_at     TEXT    NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
) WITHOUT ROWID;
