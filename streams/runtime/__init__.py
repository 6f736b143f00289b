"""The only code that imports Faust, Kafka clients, RocksDB and prometheus_client."""
