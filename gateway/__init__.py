"""The HTTP gateway: accepts notifications over HTTP and produces them to herald.requests."""
