//! Test harness: throwaway Postgres, rdkafka MockCluster, the real Kafka broker.
