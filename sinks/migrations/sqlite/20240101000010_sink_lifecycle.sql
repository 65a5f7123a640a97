-- See the Postgres migration of the same name.
ALTER TABLE callsync_offsets ADD COLUMN topic_id TEXT;
ALTER TABLE callsync_offsets ADD COLUMN backfill_until INTEGER;

CREATE TABLE IF NOT EXISTS callsync_dead_letters (
    consumer_group     TEXT    NOT NULL,
    topic              TEXT    NOT NULL,
    partition          INTEGER NOT NULL,
    kafka_offset       INTEGER NOT NULL,
    record_key         BLOB,
    value              BLOB,
    reason             TEXT    NOT NULL,
    message            TEXT    NOT NULL,
    created_at         TEXT    NOT NULL,
    published_at       TEXT,
    redrive_attempts   INTEGER NOT NULL DEFAULT 0,
    last_redrive_error TEXT,
    redriven_at        TEXT,
    PRIMARY KEY (consumer_group, topic, partition, kafka_offset)
) WITHOUT ROWID;
