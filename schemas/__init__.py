"""Avro schemas (the contract of every event), their loading and fastavro serde."""
