"""Per-user state on the real broker (streams/user_state.py): a worker given input partitions reads
exactly those partitions of the changelog, to their end, and not the others; a later write and a
tombstone are what it reads back; a partition it gave up is read again when it is handed back."""

import asyncio
import json
import uuid

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from streams.settings import Settings
from streams.topics import TopicSpec, topic_config
from streams.user_state import UserStateTable


def test_a_worker_reads_the_changelog_partitions_it_is_given_and_only_those(settings: Settings, kafka: str) -> None:
    spec = TopicSpec(f"herald.test.user-state-{uuid.uuid4().hex[:8]}", (), "this test", compacted=True)
    admin = KafkaAdminClient(bootstrap_servers=kafka)
    admin.create_topics([NewTopic(spec.name, 4, 1, topic_configs=topic_config(spec, settings))])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=kafka, acks="all")
    written = {p: {f"t/user-{p}-{i}": {"sent": [f"n{i}"]} for i in range(300)} for p in range(4)}
    for partition, users in written.items():
        for key, value in users.items():
            producer.send(spec.name, key=key.encode(), value=json.dumps(value).encode(), partition=partition)
    producer.send(spec.name, key=b"t/user-1-0", value=json.dumps({"sent": ["later"]}).encode(), partition=1)
    producer.send(spec.name, key=b"t/user-1-1", value=None, partition=1)
    producer.flush()
    producer.close()

    async def scenario() -> None:
        table = UserStateTable(settings, spec)
        await table.start()
        try:
            await table.load({1, 3})
            expected = {**written[1], **written[3], "t/user-1-0": {"sent": ["later"]}}
            del expected["t/user-1-1"]
            assert dict(table.items()) == expected
            assert table.partition_of("t/user-3-7") == 3 and table.get("t/user-0-0") is None
            await table.load({1, 3})  # held already: nothing read again
            table.forget({3})
            assert table.get("t/user-3-7") is None
            await table.load({0, 3})
            assert table.get("t/user-3-7") == {"sent": ["n7"]} and table.get("t/user-0-299") == {"sent": ["n299"]}
            assert len(table) == 300 * 3 - 1
        finally:
            await table.stop()

    asyncio.run(scenario())
