"""Faults inside a stage, on the real broker: the stage runtime (streams/runtime.py) under a broker that
refuses its outputs, and under a record that makes a handler raise.

1. A broker that refuses a stage's output. A real stage worker (StageRuntime in a `StageWorker`
   process, as `herald worker` runs one) relays records from a private input topic to a private,
   bundled output topic; shrinking the output topic's `max.message.bytes` makes the broker refuse
   every bundle (the producer's own size check still passes). The worker exits without committing
   past what was delivered; once the topic accepts again, its successor re-reads, and every record
   arrives once.
   Private topics and consumer group: the running pipeline and other traffic never see them.
2. A record that makes a handler raise, in the running pipeline: a RecordBundle on herald.validated
   holding good notifications and one whose channel has no part in its template, which makes the
   template stage's `render` raise KeyError (validate never lets such a notification through, so it
   is put on herald.validated directly). That one ends in herald.dlq as a processing_error; the rest
   of the bundle (one batch, one handler call) reaches the mailbox once each.
"""

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import KafkaError, MessageSizeTooLargeError
from kafka.structs import TopicPartition

from schemas.serde import AvroSerde
from streams.codec import bundle, unbundle
from streams.runtime import StageRuntime, partition_for
from streams.settings import REPO_ROOT, Settings
from streams.stage import Context, Incoming, Outputs, StageSpec
from streams.topics import DLQ, VALIDATED, TopicSpec
from tests.integration.pipeline_helpers import Mail, new_tenant, produce, put_template, request

RUN = uuid.uuid4().hex[:8]

# ---------------------------------------------------------------------------------------------------
# 1. The broker refusing a stage's output

RELAY_APP_ID = f"herald-test-faults-{RUN}"
RELAY_SCHEMA = "NotificationRequest"
PROBE_KEY = b"probe"  # the probe records the test itself writes to the output topic, not the worker's
TINY = "64"  # bytes: smaller than any record batch, so the broker refuses every produce to the topic


def relay_spec(source: str, target: str) -> StageSpec:
    """A stage that sends each input record on, unchanged, to a bundled topic."""
    inbound = TopicSpec(source, (RELAY_SCHEMA,), "the test produces; relay consumes")
    outbound = TopicSpec(target, (RELAY_SCHEMA,), "relay produces; the test reads", bundled=True)

    def relay(batch: list[Incoming], context: Context) -> Outputs:
        out = context.outputs()
        for record in batch:
            out.send(outbound, record.key, record.value)
        return out

    return StageSpec(name="relay", doc="test relay", inputs=(inbound,), outputs=(outbound,), handle=relay)


def relay_worker_main(argv: list[str]) -> None:
    """The worker process: the stage runtime and the Faust worker of `herald worker --stage X`,
    with settings from the HERALD_* environment the test sets."""
    from streams.worker import StageWorker

    source, target = argv
    runtime = StageRuntime(relay_spec(source, target), Settings())
    StageWorker(runtime.app, *runtime.services, loglevel="warning", quiet=True).execute_from_commandline()


class RelayWorker:
    def __init__(self, tmp_path: Path, name: str, source: str, target: str) -> None:
        self.log_path = tmp_path / f"{name}.log"
        env = {**os.environ, "HERALD_APP_ID": RELAY_APP_ID, "HERALD_DATA_DIR": str(tmp_path / "data")}
        code = "import sys; from tests.integration.test_runtime_faults import relay_worker_main; " \
               "relay_worker_main(sys.argv[1:])"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-c", code, source, target], cwd=REPO_ROOT, env=env,
                                            stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Output:
    """Every record the relay delivered to its output topic, counted by idempotency key."""

    def __init__(self, kafka: str, topic: str, serde: AvroSerde) -> None:
        self.serde = serde
        self.consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None)
        partitions = wait_until(lambda: self.consumer.partitions_for_topic(topic), 30, f"partitions of {topic}")
        self.partitions = [TopicPartition(topic, p) for p in partitions]
        self.consumer.assign(self.partitions)
        self.consumer.seek_to_beginning(*self.partitions)
        self.seen: Counter[str] = Counter()

    def poll(self) -> Counter[str]:
        for messages in self.consumer.poll(timeout_ms=200).values():
            for message in messages:
                if message.key == PROBE_KEY:
                    continue
                for _, value in unbundle(self.serde, message.value):
                    self.seen[self.serde.decode(value, RELAY_SCHEMA)["idempotency_key"]] += 1
        return self.seen

    def wait_for(self, keys: list[str], timeout: float) -> Counter[str]:
        deadline = time.monotonic() + timeout
        while not set(keys) <= set(self.poll()) and time.monotonic() < deadline:
            pass
        return self.seen

    def read_to_end(self) -> Counter[str]:
        ends = self.consumer.end_offsets(self.partitions)
        while any(self.consumer.position(tp) < end for tp, end in ends.items()):
            self.poll()
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def committed(admin: KafkaAdminClient, group: str, topic: str) -> int:
    """The group's committed offset on the (one-partition) topic; 0 before its first commit."""
    offsets = admin.list_group_offsets(group).get(group, {})
    return sum(max(meta.offset, 0) for tp, meta in offsets.items() if tp.topic == topic)


def set_max_message_bytes(admin: KafkaAdminClient, topic: str, value: str) -> None:
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, configs={"max.message.bytes": value})
    result = admin.alter_configs([resource])
    assert result["topic"][topic] == "OK", result


def broker_refuses(kafka: str, topic: str) -> bool:
    """Whether the broker refuses a small record on `topic` as too large (the config change has
    reached the log); a record it takes is a probe, which the Output reader skips.

    A producer of its own: kafka-python's idempotent producer takes a refusal as fatal and fails
    every later send of the same producer.
    """
    probe = KafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=False)
    try:
        probe.send(topic, key=PROBE_KEY, value=b"p" * 200).get(timeout=30)
        return False
    except MessageSizeTooLargeError:
        return True
    finally:
        probe.close()


def relay_records(prefix: str, n: int) -> list[dict[str, Any]]:
    return [request(new_tenant(), f"{prefix}-{RUN}-{i}", "relay", f"user-{i}", None, {"i": str(i)}) for i in range(n)]


def produce_to(producer: KafkaProducer, topic: str, serde: AvroSerde, records: list[dict[str, Any]]) -> list[str]:
    for record in records:
        producer.send(topic, key=record["idempotency_key"].encode(), value=serde.encode(RELAY_SCHEMA, record))
    producer.flush()
    return [record["idempotency_key"] for record in records]


@pytest.fixture()
def relay_topics(kafka: str, settings: Settings) -> Iterator[tuple[str, str, KafkaAdminClient]]:
    """A private input topic (one partition) and bundled output topic; deleted afterwards with the
    relay's consumer group and Faust's own topic for it."""
    source, target = f"herald-test.faults-{RUN}.in", f"herald-test.faults-{RUN}.out"
    normal = {"max.message.bytes": str(settings.max_message_bytes + 1024)}
    admin = KafkaAdminClient(bootstrap_servers=kafka, client_id="herald-test-faults")
    admin.create_topics([NewTopic(source, 1, settings.topic_replication, topic_configs=normal),
                         NewTopic(target, settings.topic_partitions, settings.topic_replication, topic_configs=normal)])
    try:
        yield source, target, admin
    finally:
        try:
            set_max_message_bytes(admin, target, normal["max.message.bytes"])
        finally:
            group = f"{RELAY_APP_ID}-relay"
            ours = [t for t in admin.list_topics() if t in (source, target) or t.startswith(group)]
            admin.delete_topics(ours, raise_errors=False)
            try:
                admin.delete_groups([group])
            except KafkaError:
                pass
            admin.close()


def test_a_refused_output_holds_the_input_offset_and_every_record_arrives_once_after(
    relay_topics: tuple[str, str, KafkaAdminClient], kafka: str, settings: Settings, serde: AvroSerde,
    tmp_path: Path,
) -> None:
    source, target, admin = relay_topics
    group = f"{RELAY_APP_ID}-relay"
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all", linger_ms=5)
    output = Output(kafka, target, serde)
    workers: list[RelayWorker] = []
    try:
        # The relay works: 20 records through, and their offset committed.
        workers.append(first := RelayWorker(tmp_path, "relay-1", source, target))
        before = produce_to(producer, source, serde, relay_records("before", 20))
        output.wait_for(before, timeout=60)
        assert set(output.seen) == set(before), f"missing: {set(before) - set(output.seen)}"
        wait_until(lambda: committed(admin, group, source) == 20, 30, "the first 20 offsets committed")

        # The broker refuses the output topic's records: the worker exits, its input offset stays.
        set_max_message_bytes(admin, target, TINY)
        wait_until(lambda: broker_refuses(kafka, target), 30, "the broker to refuse records on the output topic")
        during = produce_to(producer, source, serde, relay_records("during", 20))
        try:
            first.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the relay kept going after a refused produce:\n{first.log()[-3000:]}") from None
        assert "ProduceFailed" in first.log() and "MessageSizeTooLargeError" in first.log(), first.log()[-3000:]
        assert first.process.returncode != 0, "a worker whose output was refused exited with 0"
        assert committed(admin, group, source) == 20, "an input offset was committed past an unacknowledged output"
        assert not set(during) & set(output.poll()), "records arrived while the broker refused them"

        # The topic takes records again: the next worker re-reads what was not committed, once each.
        set_max_message_bytes(admin, target, str(settings.max_message_bytes + 1024))
        workers.append(RelayWorker(tmp_path, "relay-2", source, target))
        everything = before + during
        output.wait_for(everything, timeout=60)
        wait_until(lambda: committed(admin, group, source) == 40, 30, "all 40 offsets committed after the restart")
        seen = output.read_to_end()
        assert set(seen) == set(everything), f"missing: {set(everything) - set(seen)}"
        assert max(seen.values()) == 1, f"delivered twice: {[k for k, n in seen.items() if n > 1][:5]}"
    finally:
        for worker in workers:
            worker.stop()
        output.close()
        producer.close()


# ---------------------------------------------------------------------------------------------------
# 2. A record that makes a handler raise, in the running pipeline

POISON_TEMPLATE = f"faults-{RUN}"


def validated_notification(tenant: str, name: str, channels: list[str]) -> dict[str, Any]:
    """A notification as validate emits it to herald.validated."""
    now = datetime.now(timezone.utc)
    record = request(tenant, f"{name}-{RUN}", POISON_TEMPLATE, f"user-{name}-{RUN}", f"{name}-{RUN}@example.com",
                     {"name": name})
    record.update(notification_id=uuid.uuid4(), batch_id=None, channels=channels, received_at=now, rendered=[])
    return record


def dlq_end_offsets(kafka: str) -> dict[TopicPartition, int]:
    consumer = KafkaConsumer(bootstrap_servers=kafka)
    try:
        return consumer.end_offsets([TopicPartition(DLQ.name, p) for p in consumer.partitions_for_topic(DLQ.name)])
    finally:
        consumer.close()


def dead_letters(kafka: str, serde: AvroSerde, since: dict[TopicPartition, int], ids: set[uuid.UUID],
                 wanted: uuid.UUID, timeout: float) -> list[dict[str, Any]]:
    """herald.dlq's letters about `ids` from `since` on, read until the one about `wanted` is there."""
    consumer = KafkaConsumer(bootstrap_servers=kafka, enable_auto_commit=False, group_id=None)
    consumer.assign(list(since))
    for tp, offset in since.items():
        consumer.seek(tp, offset)
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not any(letter["notification_id"] == wanted for letter in found):
            for messages in consumer.poll(timeout_ms=500).values():
                for message in messages:
                    letter = serde.decode(message.value, "DeadLetter")
                    if letter["notification_id"] in ids:
                        found.append(letter)
        return found
    finally:
        consumer.close()


def test_a_record_that_makes_the_handler_raise_is_dead_lettered_and_the_rest_of_its_batch_delivered_once(
    pipeline: Settings, kafka: str, serde: AvroSerde, producer: KafkaProducer
) -> None:
    put_template(POISON_TEMPLATE, ["name"], "Hi {{ name }}", "Hello {{ name }}.")  # an email part only
    tenant = new_tenant()
    # A request through the whole pipeline first: once it arrives, the stages have folded the template.
    [canary] = produce(producer, [request(tenant, f"canary-{RUN}", POISON_TEMPLATE, f"user-canary-{RUN}",
                                          f"canary-{RUN}@example.com", {"name": "canary"})])
    assert Mail(pipeline, [canary]).wait_for_all(timeout=60), "a request with the new template never arrived"
    good = [validated_notification(tenant, f"good{i}", ["email"]) for i in range(20)]
    # Decodes, but the template has no sms part: render() raises KeyError (validate never lets it through).
    poison = validated_notification(tenant, "poison", ["sms"])
    records = [*good[:10], poison, *good[10:]]
    encoded = [(record["notification_id"].bytes, serde.encode("Notification", record)) for record in records]
    dlq_start = dlq_end_offsets(kafka)

    # One RecordBundle, so the poison and the good ones are one batch and one call of the handler.
    key = encoded[0][0]
    sent = producer.send(VALIDATED.name, key=key, value=bundle(serde, encoded),
                         partition=partition_for(key, pipeline.topic_partitions)).get(timeout=30)

    good_ids = [str(record["notification_id"]) for record in good]
    received = Mail(pipeline, good_ids).wait_for_all(timeout=90)
    assert len(received) == len(good), f"{len(good) - len(received)} of {len(good)} good ones never arrived"
    assert max(received.values()) == 1, f"sent twice: {[i for i, n in received.items() if n > 1][:5]}"

    ids = {record["notification_id"] for record in records}
    letters = dead_letters(kafka, serde, dlq_start, ids, poison["notification_id"], timeout=60)
    assert [letter["notification_id"] for letter in letters] == [poison["notification_id"]], \
        f"expected one dead letter, the poison's; got {[(x['notification_id'], x['reason_code']) for x in letters]} " \
        "(if template now rejects a channel its template has no part for, the test needs another poison)"
    letter = letters[0]
    assert letter["stage"] == "template" and letter["reason_code"] == "processing_error", letter
    assert letter["detail"] == "KeyError: 'sms'", letter["detail"]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (VALIDATED.name, sent.partition, sent.offset)
    assert letter["original_value"] == encoded[10][1], "the dead letter does not hold the poison record"
    assert not Mail(pipeline, [str(poison["notification_id"])]).submissions(), "the poison record was delivered"


# ---------------------------------------------------------------------------------------------------
# 3. A rebalance of the deliver group while retries wait in a retry topic


def test_a_rebalance_during_a_retry_backlog_completes_in_seconds(
    pipeline: Settings, producer: KafkaProducer, serde: AvroSerde, kafka: str
) -> None:
    """200 tasks wait in herald.retry.30s, due in 45 s. A deliver worker that held them until due
    would keep a rebalance waiting that long (Faust waits for unacked messages); the retry agent
    holds them at most `retry_hold_s`, so a second deliver worker joins in seconds. The tasks are
    delivered once, when due."""
    from tests.unit import records
    from tooling.processes import stage_command

    tenant, due = new_tenant(), datetime.now(timezone.utc) + timedelta(seconds=45)
    tasks = [records.delivery_task(notification_id=uuid.uuid4(), tenant=tenant, attempt=1, due_at=due,
                                   address=f"backlog-{i}-{RUN}@example.com",
                                   recipient=records.recipient(user_id=f"backlog-{i}-{RUN}"))
             for i in range(200)]
    retry = "herald.retry.30s"
    keyed = [(task["recipient"]["user_id"].encode(), serde.encode("DeliveryTask", task)) for task in tasks]
    for key, value in keyed:
        producer.send(retry, key=key, value=bundle(serde, [(key, value)]),
                      partition=partition_for(key, pipeline.topic_partitions))
    producer.flush()
    mail = Mail(pipeline, [str(task["notification_id"]) for task in tasks])
    time.sleep(5)  # the retry agents have taken the backlog
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    extra = subprocess.Popen(stage_command("deliver", "warn"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        started = time.monotonic()
        joined = wait_until(lambda: (lambda group: group["group_state"] == "Stable" and len(group["members"]) == 2)(
            admin.describe_groups(["herald-deliver"])["herald-deliver"]), 40, "the second deliver worker to join")
        join_s = time.monotonic() - started
        assert joined and join_s < 30, f"the rebalance took {join_s:.1f}s with a retry backlog"
    finally:
        extra.terminate()
        extra.wait(timeout=60)
        admin.close()
    assert datetime.now(timezone.utc) < due, "the join waited for the backlog to come due"
    received = mail.wait_for_all(timeout=180)
    assert len(received) == 200, f"{200 - len(received)} of 200 retried tasks never delivered"
    assert mail.stored(pipeline.email_domain) == 200
