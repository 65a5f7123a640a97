-- As in Postgres: the fingerprint column (the lowest integer for rows written before it
-- existed: any record of the same version wins the tie against them) and started_at
-- nullable (a partial record can create a row before the call's start is known). SQLite
-- cannot drop a NOT NULL constraint in place: the table is rebuilt.
CREATE TABLE calls_rebuilt (
    provider            TEXT    NOT NULL,
    account_id          TEXT    NOT NULL,
    call_id             TEXT    NOT NULL,
    version             INTEGER NOT NULL,
    fingerprint         INTEGER NOT NULL DEFAULT (-9223372036854775807 - 1),
    started_at          TEXT,
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

INSERT INTO calls_rebuilt (
    provider, account_id, call_id, version, started_at, answered_at, ended_at,
    duration_secs, billable_secs, caller_number, tracking_number, destination_number,
    campaign_id, campaign_name, publisher_id, publisher_name, buyer_id, buyer_name, status,
    provider_status, converted, revenue, payout, currency, recording_url, tags, source,
    observed_at, provider_updated_at, raw, kafka_topic, kafka_partition, kafka_offset, synced_at)
SELECT
    provider, account_id, call_id, version, started_at, answered_at, ended_at,
    duration_secs, billable_secs, caller_number, tracking_number, destination_number,
    campaign_id, campaign_name, publisher_id, publisher_name, buyer_id, buyer_name, status,
    provider_status, converted, revenue, payout, currency, recording_url, tags, source,
    observed_at, provider_updated_at, raw, kafka_topic, kafka_partition, kafka_offset, synced_at
FROM calls;

DROP TABLE calls;
ALTER TABLE calls_rebuilt RENAME TO calls;

CREATE INDEX IF NOT EXISTS calls_account_started_at ON calls (account_id, started_at);
CREATE INDEX IF NOT EXISTS calls_campaign_started_at ON calls (campaign_id, started_at);
