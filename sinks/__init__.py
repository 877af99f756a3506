"""The ClickHouse sink, its migrations and the analytics queries."""
