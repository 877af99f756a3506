"""Local provider peers: HTTP servers that speak each provider's real protocol, for `herald up` and the tests.

One process (`herald peers`) serves every HTTP provider on `peers_port`, each under the path its real
API uses (Twilio's /2010-04-01/…, Slack's /services/…, FCM's /v1/projects/…); a provider that needs
a server of its own (APNs: HTTP/2 over TLS) gets its own port. Each provider's routes live in a module
here. What a peer receives is kept where a person can look (`.herald/peers/<provider>/received.jsonl`),
and a test can tell a peer to misbehave through `/_faults/<provider>` (tooling/peers/server.py).
"""
