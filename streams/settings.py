"""One settings object for every Herald process, read from HERALD_* environment variables."""

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


# Channel providers' settings, one class per provider, nested in Settings under the channel's name.


class ProviderGuardSettings(BaseModel):
    """The limits agents/channels/guard.py keeps around each of a channel's providers."""

    # Sends a second to each provider, a token bucket holding up to `rate_burst` (a rate of 0: no limit).
    rate_per_s: float = 100.0
    rate_burst: int = 100
    # How long a send may wait for a token before it is a transient `rate_limited` instead.
    rate_wait_s: float = 1.0
    # Consecutive transient failures that open a provider's circuit breaker, and how long it stays
    # open before one probe may go through.
    breaker_failures: int = 5
    breaker_cooldown_s: float = 30.0


class TwilioSettings(BaseModel):
    """One account on Twilio's Programmable Messaging REST API; by default the local peer's."""

    base_url: str = "http://127.0.0.1:4010"
    account_sid: str = "AC00000000000000000000000000000001"
    auth_token: SecretStr = SecretStr("dev-twilio-token")
    # The sender: one of the account's numbers, or a Messaging Service (which picks a number).
    from_number: str | None = "+15005550006"
    messaging_service_sid: str | None = None
    # Where Twilio posts delivery status callbacks (the gateway); unset: Twilio posts none.
    status_callback: str | None = None
    timeout_s: float = 10.0
    max_connections: int = 64


class SmsSettings(ProviderGuardSettings):
    twilio: TwilioSettings = TwilioSettings()
    # A second account (or provider) on Twilio's protocol, used while the primary's breaker is open.
    secondary: TwilioSettings | None = None


class ChatSettings(ProviderGuardSettings):
    """Chat webhooks (agents/channels/chat.py): Slack incoming webhooks and Herald-signed generic ones.
    The guard's limits hold per webhook URL (Slack allows about one message a second per webhook,
    with short bursts).

    A webhook URL comes from the user's preferences, so it is checked against these lists before
    Herald sends anything to it (server-side request forgery). `allowed_hosts`: the hosts a webhook
    may point at (exact names, or `*.example.com` for any subdomain); empty: any host that is not
    internal (loopback, private, link-local IPs, localhost, .local, .internal). `http_hosts`: the
    hosts that may be reached over plain http (the local peers); every other URL must be https.
    """

    allowed_hosts: list[str] = ["hooks.slack.com", "127.0.0.1"]
    http_hosts: list[str] = ["127.0.0.1"]
    # A URL on these hosts with Slack's path (/services/T…/B…/…) is a Slack incoming webhook.
    slack_hosts: list[str] = ["hooks.slack.com", "127.0.0.1"]
    # Signs generic webhooks (X-Herald-Signature: v1=HMAC-SHA256(secret, "<timestamp>.<body>")).
    # Slack: about one message a second per webhook, short bursts allowed.
    rate_per_s: float = 1.0
    rate_burst: int = 20
    webhook_secret: SecretStr = SecretStr("dev-chat-secret")
    timeout_s: float = 10.0


class InboxSettings(BaseModel):
    """The in-app inbox: the herald-inbox provider (agents/channels/in_app.py) appends messages to
    herald.inbox; the gateway folds that log and serves each user's inbox (gateway/inbox.py)."""

    # Signs the tokens a user's browser sends (`herald inbox token`); set a long random one in production.
    token_secret: SecretStr = SecretStr("dev-inbox-secret")
    # Messages kept per user, newest first; older ones leave the inbox (memory: see gateway/inbox.py).
    max_messages: int = 200
    # How long herald.inbox keeps events (-1: forever). Older messages leave the inbox, and a
    # gateway's replay of the log on start stays bounded.
    retention_ms: int = 90 * 24 * 3600 * 1000
    # How long a message (deliver) or a read/seen (gateway) waits for the broker: then transient / 503.
    produce_timeout_s: float = 10.0


class ApnsSettings(BaseModel):
    """Apple Push Notification service, HTTP/2 with token (ES256 JWT) auth; by default the local peer.
    Apple's: host api.push.apple.com (api.sandbox.push.apple.com for development builds), port 443."""

    host: str = "127.0.0.1"
    port: int = 4443
    key_id: str = "HERALDKEY1"
    team_id: str = "HERALDTM01"
    # The app's bundle id (apns-topic).
    topic: str = "io.herald.app"
    # The token-auth key (.p8 PEM); unset: the local key of tooling/peers/keys.py.
    private_key: SecretStr | None = None
    # CA bundle to trust; unset: the local peer's CA for a loopback host, the system's otherwise.
    ca_file: Path | None = None
    timeout_s: float = 10.0


class FcmSettings(BaseModel):
    """Firebase Cloud Messaging HTTP v1 with a service account's OAuth2 token; by default the local peer.
    Google's: base_url https://fcm.googleapis.com, token_uri https://oauth2.googleapis.com/token."""

    base_url: str = "http://127.0.0.1:4010"
    project_id: str = "herald-local"
    # The service account key (Google's JSON key file, or its content); neither: the local account.
    service_account_file: Path | None = None
    service_account_json: SecretStr | None = None
    # Where access tokens come from; empty: the service account's own token_uri.
    token_uri: str = "http://127.0.0.1:4010/token"
    timeout_s: float = 10.0
    max_connections: int = 64


class WebPushSettings(BaseModel):
    """Web push (RFC 8030) with VAPID (RFC 8292) and aes128gcm payloads (RFC 8291).

    A subscription's endpoint comes from a browser, by way of a user's preferences, so it is checked
    before Herald posts to it (server-side request forgery): its host must be one of `allowed_hosts`
    (exact names, or `*.example.com` for any subdomain), over https unless it is one of `http_hosts`
    (the local peer)."""

    # The application server key the browsers subscribed with (PEM, or raw base64url); unset: the local key.
    vapid_private_key: SecretStr | None = None
    vapid_subject: str = "mailto:ops@herald.local"
    allowed_hosts: list[str] = ["fcm.googleapis.com", "updates.push.services.mozilla.com", "*.notify.windows.com",
                                "*.push.apple.com", "127.0.0.1"]
    http_hosts: list[str] = ["127.0.0.1"]
    # How long the push service keeps a message for an offline browser (TTL header).
    ttl_s: int = 24 * 3600
    timeout_s: float = 10.0
    max_connections: int = 64


class PushSettings(ProviderGuardSettings):
    """The push providers; the guard's limits hold per provider (APNs, FCM, web push)."""

    rate_per_s: float = 1000.0
    rate_burst: int = 1000
    apns: ApnsSettings = ApnsSettings()
    fcm: FcmSettings = FcmSettings()
    webpush: WebPushSettings = WebPushSettings()


class Settings(BaseSettings):
    # Nested settings (a channel's providers) read e.g. HERALD_SMS__TWILIO__ACCOUNT_SID.
    model_config = SettingsConfigDict(env_prefix="HERALD_", env_file=".env", extra="ignore", env_nested_delimiter="__")

    # Where local servers keep their data and logs (git-ignored).
    data_dir: Path = REPO_ROOT / ".herald"

    kafka_bootstrap: str = "127.0.0.1:9092"
    # How every Kafka client Herald runs (Faust, aiokafka, kafka-python) connects: streams/kafka_clients.py
    # turns these into each client's arguments. SSL and SASL_SSL check the broker's certificate
    # against `kafka_ssl_cafile` (unset: the system's CAs) and its host name; a client certificate
    # (mutual TLS) is `kafka_ssl_certfile` with its key in `kafka_ssl_keyfile`. SASL logs in as
    # `kafka_sasl_username` with PLAIN or SCRAM; the password is a secret, never logged.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    topic_partitions: int = 4
    topic_replication: int = 1
    # How long a stage's producer waits to fill a request. Stages bundle records themselves and wait
    # for the acknowledgement before the next batch, so lingering would only add latency.
    producer_linger_ms: int = 0
    # One size limit from the gateway to every producer: the largest Kafka message (key, value and
    # framing) Herald produces; topics are created to accept it. Records are checked against
    # `max_record_bytes`, which leaves room for the message's own overhead.
    max_message_bytes: int = 1_000_000
    # Stage batches: Kafka messages taken at once (a bundle holds many records), how long to wait
    # to fill a batch, and records handed to a handler at once (deliver: `deliver_concurrency`).
    stage_batch_max: int = 500
    stage_batch_within_s: float = 0.02
    # Waiting topics (retries, scheduled sends): a task not due yet goes back to its topic and is
    # read again this soon, so a scheduled notification goes out within about this of its time.
    stage_delayed_within_s: float = 0.2
    # How often a stage with time-driven work (StageSpec.tick: digest windows closing) looks for it.
    stage_tick_s: float = 1.0
    stage_handler_records: int = 2000
    # Records per RecordBundle message on internal topics (and never more than max_record_bytes).
    bundle_max_records: int = 500
    # Retention of the flow topics; templates and preferences are compacted and kept forever.
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    # herald.receipts (providers' delivery reports): longer than any fallback_after_s.
    receipts_retention_ms: int = 24 * 3600 * 1000

    # Confluent-compatible schema registry; unset means Avro single-object encoding.
    schema_registry_url: str | None = None

    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 9000
    clickhouse_http_port: int = 8123
    clickhouse_database: str = "herald"
    clickhouse_user: str = "default"
    clickhouse_password: str = ""

    # ClickHouse sink: flush when this many events are buffered or this many seconds passed.
    sink_batch_size: int = 20_000
    sink_flush_seconds: float = 1.0
    sink_retry_max_seconds: float = 30.0

    app_id: str = "herald"
    # Static group membership (Kafka's group.instance.id): a worker started again with the same id
    # takes its partitions back at once instead of after the dead member's session times out. It
    # must be unique among a stage's running workers; the local supervisor sets one per stage.
    worker_instance_id: str | None = None
    # Worker processes per stage that `herald worker --stage all` (so `herald up`) runs on this host.
    worker_replicas: int = Field(default=1, ge=1)

    # Delivery: tasks in flight per deliver agent, attempts before giving up, and how long the
    # delivered table remembers a sent notification (longer than any retry can take).
    deliver_concurrency: int = 128
    # The longest a retry topic's agent waits for a task to come due before it puts the task back
    # on its retry topic: what a rebalance may have to wait for.
    retry_hold_s: float = 2.0
    delivery_max_attempts: int = 5
    delivered_ttl_s: int = 7 * 24 * 3600
    # Digests (agents/digest.py): how often the digest stage looks for windows whose time is up (a
    # digest goes out at most this late), and how long it remembers the notifications of a sent
    # digest, so one read again after a crash (its offset not yet committed) is not sent twice.
    digest_tick_s: float = 1.0
    digest_sent_memory_s: float = 600.0

    # HTTP gateway.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # The key of tenant "default". Other tenants get keys of their own (`herald tenants create-key`,
    # herald.tenants), which only the admin key may create or revoke; empty turns those endpoints off.
    api_key: str = "dev-key"
    admin_api_key: str = ""
    # The gateway's address as recipients' browsers and providers' callbacks reach it (tracking links,
    # status callbacks), and the secret that signs tracking links. Set both in production.
    public_url: str = "http://127.0.0.1:8080"
    tracking_secret: SecretStr = SecretStr("dev-tracking-secret")
    # Gateway limits (docs/architecture.md section 5 has them all, with the per-field ones of
    # gateway/server.py). Recipients in one batch. Requests a second per API key, a token bucket
    # that holds up to `gateway_rate_burst` of them (a rate of 0 turns the limit off); the bucket
    # lives in one gateway process, so N replicas let a key through up to N times as fast.
    gateway_max_batch_recipients: int = 10_000
    # How long the gateway waits for Kafka to take a request before it answers 503.
    gateway_produce_timeout_s: float = 10.0
    gateway_rate_per_s: float = 200.0
    gateway_rate_burst: int = 400
    # GET /metrics: when `metrics_api_key` is set, only with that key (X-API-Key or Bearer); when it
    # is not, open to anyone if `metrics_public`, else refused (403). By default nothing is exposed.
    metrics_api_key: str = ""
    metrics_public: bool = False

    # Email provider (SMTP). Locally, `herald up` runs an aiosmtpd server on this port.
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_pool_size: int = 16
    smtp_timeout_s: float = 10.0
    # Transport security: "starttls" (upgrade on the submission port, 587), "tls" (implicit TLS, 465) or
    # "none". The server's certificate is checked against `smtp_ca_file` (unset: the local mailbox's
    # CA for a loopback host, the system's CAs otherwise). With a username, the client logs in (AUTH)
    # once the connection is encrypted. The local mailbox mirrors these: it offers the TLS mode
    # configured here and requires AUTH with these credentials when a username is set.
    smtp_tls: Literal["none", "starttls", "tls"] = "none"
    smtp_ca_file: Path | None = None
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    # Fault injection in the local mailbox (tooling/mailbox.py), for the chaos tests; 0 = none. Of the
    # SMTP transactions (MAIL … DATA), the share where one of MAIL, RCPT or DATA (drawn at random) is
    # answered 4xx, and the share where it stalls `mailbox_timeout_s` first (unset: 5 s longer than
    # smtp_timeout_s, so the client really times out). A failed or stalled message is never stored.
    mailbox_fail_rate: float = 0.0
    mailbox_timeout_rate: float = 0.0
    mailbox_timeout_s: float | None = None
    email_from: str = "Herald <noreply@herald.local>"
    email_domain: str = "herald.local"
    # Open pixel and click redirects in HTML emails (agents/channels/tracking.py).
    email_tracking: bool = True
    # Template bounds (agents/template.py). A template that breaks one is rejected `template_limit`
    # and the worker carries on. Templates are data written by people: without bounds one can run
    # for minutes or allocate gigabytes, and every worker that takes its partition dies on it.
    # - Output of one rendered part (subject, text or HTML), in UTF-8 bytes; also the largest string
    #   or value (as text) a template may build, and a part may build 16 times this in all. 256 KiB
    #   is far above any real email (Gmail clips HTML past ~100 KB), and a part, with the
    #   notification around it, fits a Kafka record (max_record_bytes).
    template_max_output_bytes: int = 256 * 1024
    # CPU time of the rendering thread for one notification, all its channels' parts, not counting
    # a template's first compile (a stalled or throttled worker does not count). A typical part
    # takes 2-10 µs, so 100 ms is 10,000 times that, and a partition of hostile notifications still
    # moves at about 8 per second or more (a render is stopped within 1.25 times the limit).
    template_max_render_ms: float = 100.0
    # Longest range() and most items of a list a template builds (range, *, +, batch, slice, …),
    # and most lines wordwrap may make: loops over data are short in a notification.
    template_max_range: int = 10_000
    # How long ingest remembers an idempotency key.
    idempotency_ttl_s: int = 24 * 3600

    # Each stage worker's /healthz, /readyz and /metrics (streams/health.py); 0: a free port, written
    # to <data_dir>/run/health-<stage>.port (locally, six workers share a host).
    health_host: str = "127.0.0.1"
    health_port: int = 0

    # Fallback when not delivered in time: category ('*' for any) → seconds. A delivery on a channel
    # whose provider reports deliveries (SMS), of a notification with a fallback_channel, falls back
    # once if no `delivered` report came within this time (a `failed` report counts as none).
    fallback_after_s: dict[str, float] = {}
    # "text", or "json": one JSON object per line, with the notification id on lines about one (streams/logs.py).
    log_format: Literal["text", "json"] = "text"

    # Local provider peers (tooling/peers): one HTTP server for every HTTP provider, run by `herald up`.
    peers_host: str = "127.0.0.1"
    peers_port: int = 4010

    # Channel providers, one nested block per channel (the classes above).
    sms: SmsSettings = SmsSettings()
    chat: ChatSettings = ChatSettings()
    push: PushSettings = PushSettings()
    inbox: InboxSettings = InboxSettings()

    def __init__(self, **values: Any) -> None:
        # Secrets may also come from files, one per setting, named like its variable (a Kubernetes
        # secret mounted as a volume): HERALD_SECRETS_DIR=/etc/herald/secrets holding e.g. a file
        # HERALD_KAFKA_SASL_PASSWORD. A variable set in the environment wins over a file.
        super().__init__(_secrets_dir=os.environ.get("HERALD_SECRETS_DIR"), **values)

    @property
    def max_record_bytes(self) -> int:
        return self.max_message_bytes - 1024


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
