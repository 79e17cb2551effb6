"""Kafka test driver for nerite's end-to-end trials (confluent-kafka from PyPI).

Every command prints JSON on stdout; librdkafka's own logging is silenced.

  create BOOT TOPIC PARTITIONS
  produce BOOT TOPIC COUNTS           COUNTS: per-partition counts, e.g. 2000,2000,1500,3000
  produce-keyed BOOT TOPIC N PREFIX   N records with unique keys PREFIX-i, value v-PREFIX-i and a
                                      header origin=checkout, partitioned by key (murmur2)
  commit BOOT GROUP TOPIC P:O,...     commit offsets for the group (no membership)
  committed BOOT GROUP TOPIC NPART    print the group's committed offsets
  commit-groups BOOT TOPIC NPART PREFIX N
                                      groups PREFIX-0..N-1 commit offset 0 on every partition
  dump BOOT TOPIC                     every record of the topic (partition, offset, key, value,
                                      headers)
  members BOOT GROUP TOPIC N          run N group members (no commits); print assignments as
                                      they change; stop when stdin closes
"""

import json
import os
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

QUIET = {"log_level": 0}


def conf(boot, **extra):
    c = {"bootstrap.servers": boot, **QUIET}
    # Behind a TLS front: speak TLS and trust its CA.
    if os.environ.get("NERITE_KAFKA_CA"):
        c["security.protocol"] = "SSL"
        c["ssl.ca.location"] = os.environ["NERITE_KAFKA_CA"]
    c.update(extra)
    return c


def out(obj):
    print(json.dumps(obj), flush=True)


def create(boot, topic, partitions):
    admin = AdminClient(conf(boot))
    futures = admin.create_topics([NewTopic(topic, num_partitions=int(partitions), replication_factor=1)])
    for _, f in futures.items():
        f.result(timeout=30)
    out({"created": topic, "partitions": int(partitions)})


def produce(boot, topic, counts):
    p = Producer(conf(boot, **{"linger.ms": 5, "partitioner": "murmur2_random"}))
    total = 0
    for part, n in enumerate(int(x) for x in counts.split(",")):
        for i in range(n):
            p.produce(topic, key=b"k%d" % i, value=b"v", partition=part)
            total += 1
            if i % 1000 == 0:
                p.poll(0)
        p.flush(30)
    out({"produced": total})


def produce_keyed(boot, topic, n, prefix):
    p = Producer(conf(boot, **{"linger.ms": 5, "partitioner": "murmur2_random", "enable.idempotence": True}))
    errors = []

    def done(err, _msg):
        if err is not None:
            errors.append(str(err))

    for i in range(int(n)):
        key = f"{prefix}-{i}"
        p.produce(topic, key=key.encode(), value=f"v-{key}".encode(), headers=[("origin", b"checkout")], on_delivery=done)
        if i % 500 == 0:
            p.poll(0)
    p.flush(60)
    out({"produced": int(n), "errors": errors[:5]})


def commit(boot, group, topic, offsets):
    c = Consumer(conf(boot, **{"group.id": group, "enable.auto.commit": False}))
    tps = []
    for item in offsets.split(","):
        part, off = item.split(":")
        tps.append(TopicPartition(topic, int(part), int(off)))
    res = c.commit(offsets=tps, asynchronous=False)
    c.close()
    out({"committed": [[t.partition, t.offset] for t in res]})


def commit_groups(boot, topic, npart, prefix, n):
    tps = [TopicPartition(topic, p, 0) for p in range(int(npart))]
    for i in range(int(n)):
        c = Consumer(conf(boot, **{"group.id": f"{prefix}-{i}", "enable.auto.commit": False}))
        c.commit(offsets=tps, asynchronous=False)
        c.close()
    out({"groups": int(n)})


def committed(boot, group, topic, npart):
    c = Consumer(conf(boot, **{"group.id": group, "enable.auto.commit": False}))
    res = c.committed([TopicPartition(topic, p) for p in range(int(npart))], timeout=20)
    c.close()
    out({"committed": {t.partition: t.offset for t in res}})


def dump(boot, topic):
    admin = AdminClient(conf(boot))
    md = admin.list_topics(topic, timeout=20)
    parts = sorted(md.topics[topic].partitions)
    c = Consumer(conf(boot, **{"group.id": "nerite-test-dump", "enable.auto.commit": False}))
    records = []
    for p in parts:
        lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=20)
        if hi <= lo:
            continue
        c.assign([TopicPartition(topic, p, lo)])
        got = lo
        deadline = time.time() + 60
        while got < hi and time.time() < deadline:
            m = c.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            records.append({
                "partition": m.partition(),
                "offset": m.offset(),
                "key": (m.key() or b"").decode(errors="replace"),
                "value": (m.value() or b"").decode(errors="replace"),
                "headers": {k: (v or b"").decode(errors="replace") for k, v in (m.headers() or [])},
            })
            got = m.offset() + 1
        c.unassign()
    c.close()
    out({"records": records})


def members(boot, group, topic, n):
    stop = threading.Event()
    lock = threading.Lock()

    def member(i):
        assigned = []

        def on_assign(_c, tps):
            with lock:
                assigned[:] = sorted(t.partition for t in tps)
                out({"member": i, "assigned": list(assigned)})

        def on_revoke(_c, tps):
            with lock:
                out({"member": i, "revoked": sorted(t.partition for t in tps)})

        c = Consumer(conf(boot, **{
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "latest",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 1000,
        }))
        c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
        while not stop.is_set():
            # Reads records but never commits: the group's committed offsets stay as set.
            c.poll(0.2)
        c.close()

    threads = []
    for i in range(int(n)):
        t = threading.Thread(target=member, args=(i,), daemon=True)
        t.start()
        threads.append(t)
        time.sleep(3)  # the second member joins an established group: a rebalance
    sys.stdin.read()
    stop.set()
    for t in threads:
        t.join(timeout=15)
    out({"stopped": True})


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "create": create,
        "produce": produce,
        "produce-keyed": produce_keyed,
        "commit": commit,
        "committed": committed,
        "commit-groups": commit_groups,
        "dump": dump,
        "members": members,
    }[cmd](*args)


if __name__ == "__main__":
    main()
