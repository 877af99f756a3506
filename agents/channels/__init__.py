"""Provider adapters, one module per channel."""
