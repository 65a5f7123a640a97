-- The newest version of every call, with the Kafka coordinates it came from.
CREATE TABLE IF NOT EXISTS calls (
    provider            text        NOT NULL,
    account_id          text        NOT NULL,
    call_id             text        NOT NULL,
    version             bigint      NOT NULL,
    started_at          timestamptz NOT NULL,
    answered_at         timestamptz,
    ended_at            timestamptz,
    duration_secs       integer,
    billable_secs       integer,
    caller_number       text,
    tracking_number     text,
    destination_number  text,
    campaign_id         text,
    campaign_name       text,
    publisher_id        text,
    publisher_name      text,
    buyer_id            text,
    buyer_name          text,
    status              text        NOT NULL,
    provider_status     text,
    converted           boolean,
    revenue             numeric(18,4),
    payout              numeric(18,4),
    currency            text,
    recording_url       text,
    tags                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    source              text        NOT NULL,
    observed_at         timestamptz NOT NULL,
    provider_updated_at timestamptz,
    raw                 bytea,
    kafka_topic         text        NOT NULL,
    kafka_partition     integer     NOT NULL,
    kafka_offset        bigint      NOT NULL,
    synced_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, account_id, call_id)
);

-- BI: one account's calls over time; one campaign's calls over time.
CREATE INDEX IF NOT EXISTS calls_account_started_at ON calls (account_id, started_at);
CREATE INDEX IF NOT EXISTS calls_campaign_started_at ON calls (campaign_id, started_at);

-- The sink's position per consumer group and partition, committed in the same
-- transaction as the rows it covers.
CREATE TABLE IF NOT EXISTS callsync_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
