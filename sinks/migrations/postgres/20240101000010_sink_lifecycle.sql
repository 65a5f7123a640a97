-- Which incarnation of the topic an offset belongs to (Kafka's topic id; NULL when the
-- cluster did not give one), and where a partition's backfill ends: a partition the sink
-- found without an offset is read from its earliest retained record up to the end it had
-- then (`callsync status` shows it as backfilling until next_offset reaches it).
ALTER TABLE callsync_offsets ADD COLUMN IF NOT EXISTS topic_id text;
ALTER TABLE callsync_offsets ADD COLUMN IF NOT EXISTS backfill_until bigint;

-- Records the sink could not write (undecodable, refused by the database), kept in the
-- same transaction as the offsets that move past them, so a crash or an offset conflict
-- never loses or doubles one. They are also published to `calls.dlq` (published_at), and
-- `callsync dlq redrive` re-applies them here exactly once (redriven_at).
CREATE TABLE IF NOT EXISTS callsync_dead_letters (
    consumer_group   text        NOT NULL,
    topic            text        NOT NULL,
    partition        integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    record_key       bytea,
    value            bytea,
    reason           text        NOT NULL,
    message          text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    published_at     timestamptz,
    redrive_attempts integer     NOT NULL DEFAULT 0,
    last_redrive_error text,
    redriven_at      timestamptz,
    PRIMARY KEY (consumer_group, topic, partition, kafka_offset)
);
CREATE INDEX IF NOT EXISTS callsync_dead_letters_unpublished
    ON callsync_dead_letters (consumer_group, topic, partition) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS callsync_dead_letters_pending
    ON callsync_dead_letters (consumer_group, topic) WHERE redriven_at IS NULL;
