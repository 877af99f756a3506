"""A Faust agent on the real broker: Avro in from one topic, Avro out to another."""

import os
import subprocess
import sys
import uuid

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from schemas.serde import AvroSerde
from streams.settings import REPO_ROOT
from tests.integration.test_event_sink import lifecycle_events

N = 200


def test_faust_agent_relays_avro_events(kafka: str, producer: KafkaProducer, serde: AvroSerde) -> None:
    run = uuid.uuid4().hex[:8]
    source, target = f"herald.test.relay-in.{run}", f"herald.test.relay-out.{run}"
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(source, 2, 1), NewTopic(target, 2, 1)])
    admin.close()

    env = dict(os.environ, RELAY_SOURCE=source, RELAY_TARGET=target, RELAY_APP_ID=f"herald-test-relay-{run}")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.relay_app", "worker", "-l", "warn"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        events = lifecycle_events(N, tenant=f"relay-{run}")
        for event in events:
            producer.send(source, key=event["notification_id"].bytes, value=serde.encode("LifecycleEvent", event))
        producer.flush()

        consumer = KafkaConsumer(target, bootstrap_servers=kafka, auto_offset_reset="earliest",
                                 consumer_timeout_ms=60_000)
        received = {}
        for message in consumer:
            event = serde.decode(message.value, "LifecycleEvent")
            received[event["event_id"]] = event
            if len(received) == N:
                break
        consumer.close()
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0].decode(errors="replace")

    assert len(received) == N, f"relayed {len(received)} of {N}; worker said:\n{output[-3000:]}"
    assert {e["event_id"] for e in events} == set(received)
    assert all(e["status"] == "delivered" and e["stage"] == "relay" for e in received.values())
