# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A region's Kafka in the runbooks: the preflight (broker answers, the auth service's topics are there with their
partitions), consumer-group offsets moved to a recovery point by timestamp, the revocation events since a point
read back, and the DR event published for downstream consumers.

Through kafka-python, the client any Kafka, MSK, Confluent or Redpanda cluster speaks to. The lab's broker is the
Tansu stand-in (docs/service.md says what it lacks). Runs on the controller. A SASL password is a parameter
(``no_log``) and never appears in a result or a message. Private to the collection; plain Python, no Ansible.
"""

from __future__ import annotations

import json
import time

from ansible_collections.immersiverse.dr.plugins.module_utils import _errors

SECURITY_KEYS = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                 "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")
MAX_EVENTS = 5000000


class KafkaOpsError(_errors.DrError):
    """A Kafka step that cannot be done; the message says what to check."""


def _kafka():
    try:
        import kafka
    except ImportError:
        raise KafkaOpsError("the kafka-python library is missing on the controller (pip install kafka-python)") \
            from None
    return kafka


def _config(bootstrap, timeout, security):
    if not bootstrap:
        raise KafkaOpsError("no Kafka bootstrap servers given")
    cfg = {"bootstrap_servers": [s.strip() for s in bootstrap.split(",") if s.strip()],
           "client_id": "immersiverse.dr", "request_timeout_ms": int(timeout * 1000),
           "bootstrap_timeout_ms": int(timeout * 1000)}
    for key, value in (security or {}).items():
        if key not in SECURITY_KEYS:
            raise KafkaOpsError("unknown Kafka security option %r (known: %s)" % (key, ", ".join(SECURITY_KEYS)))
        if value not in (None, ""):
            cfg[key] = value
    return cfg


def _fail(bootstrap, what, exc):
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    raise KafkaOpsError("Kafka %s: %s failed: %s%s" % (bootstrap, what, exc.__class__.__name__,
                                                       ": " + text if text else "")) from None


def admin(bootstrap, timeout=5.0, security=None):
    kafka = _kafka()
    try:
        return kafka.KafkaAdminClient(**_config(bootstrap, timeout, security))
    except Exception as exc:  # noqa: BLE001
        _fail(bootstrap, "connecting (is the broker up and reachable from the controller?)", exc)


def consumer(bootstrap, timeout=5.0, security=None, group_id=None):
    kafka = _kafka()
    cfg = _config(bootstrap, timeout, security)
    cfg.update({"group_id": group_id, "enable_auto_commit": False, "auto_offset_reset": "earliest",
                "consumer_timeout_ms": int(timeout * 1000)})
    try:
        return kafka.KafkaConsumer(**cfg)
    except Exception as exc:  # noqa: BLE001
        _fail(bootstrap, "connecting (is the broker up and reachable from the controller?)", exc)


def topics_info(bootstrap, topics, timeout=5.0, security=None):
    """{topic: {"partitions": n} or {"missing": True}} for the topics asked, and the broker count."""
    client = admin(bootstrap, timeout, security)
    try:
        try:
            brokers = len(client.describe_cluster().get("brokers", []))
            existing = set(client.list_topics())
            described = client.describe_topics([t for t in topics if t in existing]) if topics else []
        except Exception as exc:  # noqa: BLE001
            _fail(bootstrap, "reading the topics", exc)
        info = {t: {"missing": True} for t in topics}
        for entry in described:
            name = entry.get("name") or entry.get("topic")
            if name in info and not entry.get("error_code"):
                info[name] = {"partitions": len(entry.get("partitions") or [])}
        return {"brokers": brokers, "topics": info}
    finally:
        client.close()


def preflight(bootstrap, wanted, timeout=5.0, security=None):
    """``wanted``: {topic: minimum partitions}. Returns the info plus ``problems`` (empty when all is there)."""
    info = topics_info(bootstrap, sorted(wanted), timeout, security)
    problems = []
    for topic, minimum in sorted(wanted.items()):
        got = info["topics"][topic]
        if got.get("missing"):
            problems.append("topic %s is missing" % topic)
        elif got["partitions"] < int(minimum or 1):
            problems.append("topic %s has %d partitions, %d expected" % (topic, got["partitions"], int(minimum)))
    info["problems"] = problems
    return info


def _partitions(client, bootstrap, topic, timeout):
    kafka = _kafka()
    deadline = time.monotonic() + timeout
    parts = client.partitions_for_topic(topic)
    while parts is None and time.monotonic() < deadline:
        time.sleep(0.2)
        parts = client.partitions_for_topic(topic)
    if not parts:
        raise KafkaOpsError("Kafka %s: topic %s does not exist (or has no partitions)" % (bootstrap, topic))
    return [kafka.TopicPartition(topic, p) for p in sorted(parts)]


def _offsets_by_time(client, bootstrap, topic, timestamp_ms, timeout):
    """The topic's partitions, the first offset of each at or after ``timestamp_ms`` (None: nothing after it), and
    their beginning and end offsets."""
    try:
        tps = _partitions(client, bootstrap, topic, timeout)
        found = client.offsets_for_times({tp: int(timestamp_ms) for tp in tps})
        ends = client.end_offsets(tps)
        begins = client.beginning_offsets(tps)
    except KafkaOpsError:
        raise
    except Exception as exc:  # noqa: BLE001
        _fail(bootstrap, "looking up offsets of %s by time" % topic, exc)
    return tps, found, begins, ends


def offsets_at(bootstrap, topic, timestamp_ms, timeout=5.0, security=None):
    """{partition: offset}: the first offset whose timestamp is >= timestamp_ms, else the end offset (nothing
    after the point), plus the beginning and end offsets."""
    client = consumer(bootstrap, timeout, security)
    try:
        tps, found, begins, ends = _offsets_by_time(client, bootstrap, topic, timestamp_ms, timeout)
        out = {}
        for tp in tps:
            hit = found.get(tp)
            offset = hit.offset if hit is not None else ends[tp]
            if offset < ends[tp]:
                offset = _first_at_or_after(client, tp, offset, ends[tp], int(timestamp_ms), timeout)
            out[tp.partition] = {"offset": offset, "beginning": begins[tp], "end": ends[tp]}
        return out
    finally:
        client.close()


def _first_at_or_after(client, tp, offset, end, timestamp_ms, timeout, limit=100000):
    """The broker's lookup by time, checked on the records themselves: some brokers (the lab's Tansu) answer it by
    append time, so the records from there whose own timestamp is still before the point are skipped."""
    client.assign([tp])
    client.seek(tp, offset)
    seen = 0
    deadline = time.monotonic() + max(timeout * 4, 20.0)
    while offset < end and seen < limit and time.monotonic() < deadline:
        batch = client.poll(timeout_ms=int(timeout * 1000), max_records=500)
        records = [r for r in batch.get(tp, []) if r.offset >= offset]
        for record in records:
            if record.timestamp >= timestamp_ms:
                return record.offset
            offset = record.offset + 1
            seen += 1
    if offset < end and (seen >= limit or time.monotonic() >= deadline):
        raise KafkaOpsError("Kafka: reading %s[%d] from offset %d to find the recovery point took too long"
                            % (tp.topic, tp.partition, offset))
    return offset


def reset_group(bootstrap, group, topics, timestamp_ms, timeout=5.0, security=None, check_mode=False):
    """Move ``group``'s committed offsets on ``topics`` to the first event at or after ``timestamp_ms`` (events
    after the recovery point are processed again). Kafka refuses this while the group has members: the consumers
    must be stopped first (the isolate phase scales the app to 0)."""
    kafka = _kafka()
    from kafka.structs import OffsetAndMetadata

    wanted = {}
    for topic in topics:
        for partition, where in offsets_at(bootstrap, topic, timestamp_ms, timeout, security).items():
            wanted[kafka.TopicPartition(topic, partition)] = where["offset"]
    client = admin(bootstrap, timeout, security)
    try:
        try:
            current = client.list_group_offsets(group).get(group, {}) if hasattr(client, "list_group_offsets") \
                else client.list_consumer_group_offsets(group)
        except Exception as exc:  # noqa: BLE001
            _fail(bootstrap, "reading group %s's offsets" % group, exc)
        rows, change = [], {}
        for tp in sorted(wanted, key=lambda t: (t.topic, t.partition)):
            before = current.get(tp)
            before = before.offset if before is not None and before.offset >= 0 else None
            rows.append({"topic": tp.topic, "partition": tp.partition, "before": before, "after": wanted[tp]})
            if before != wanted[tp]:
                change[tp] = OffsetAndMetadata(wanted[tp], "immersiverse.dr recovery point", -1)
        if change and not check_mode:
            try:
                answer = client.alter_group_offsets(group, change) if hasattr(client, "alter_group_offsets") \
                    else client.alter_consumer_group_offsets(group, change)
            except Exception as exc:  # noqa: BLE001
                name = exc.__class__.__name__
                if "UnknownMemberId" in name or "GroupNotEmpty" in name or "RebalanceInProgress" in name:
                    raise KafkaOpsError(
                        "Kafka %s: group %s still has active consumers, so its offsets cannot be moved: stop them "
                        "first (scale the app to 0; the isolate phase does it), then run again" % (bootstrap, group)
                    ) from None
                _fail(bootstrap, "moving group %s's offsets" % group, exc)
            bad = {tp: err for tp, err in (answer or {}).items()
                   if getattr(err, "__name__", str(err)) not in ("NoError",)}
            if bad:
                raise KafkaOpsError("Kafka %s: the broker refused group %s's offsets for %s" % (
                    bootstrap, group, ", ".join("%s[%d]: %s" % (tp.topic, tp.partition, getattr(e, "__name__", e))
                                                for tp, e in bad.items())))
        return {"changed": bool(change), "group": group, "partitions": rows}
    finally:
        client.close()


def read_since(bootstrap, topic, timestamp_ms, timeout=5.0, security=None, max_events=MAX_EVENTS):
    """Every event of ``topic`` from the first one at or after ``timestamp_ms`` up to the end offsets taken when the
    read starts. Returns ``events`` (decoded JSON values, with their timestamp) and ``coverage``: whether the topic
    still holds everything after the point (retention deleted nothing after it), per partition."""
    client = consumer(bootstrap, timeout, security)
    try:
        tps, found, begins, ends = _offsets_by_time(client, bootstrap, topic, timestamp_ms, timeout)
        client.assign(tps)
        starts, gaps = {}, []
        for tp in tps:
            hit = found.get(tp)
            starts[tp] = hit.offset if hit is not None else ends[tp]
            if begins[tp] > 0:
                # Retention (or compaction) removed the partition's first events: the stream covers the point only
                # if an event at or before it is still there.
                client.seek(tp, begins[tp])
                first = _poll_one(client, tp, timeout)
                if first is None or first.timestamp > int(timestamp_ms):
                    gaps.append({"partition": tp.partition, "beginning": begins[tp],
                                 "first_timestamp_ms": first.timestamp if first is not None else None})
        total = sum(max(0, ends[tp] - starts[tp]) for tp in tps)
        if total > max_events:
            raise KafkaOpsError("Kafka %s: %d events of %s after the point, more than max_events %d" % (
                bootstrap, total, topic, max_events))
        events, unreadable = [], 0
        for tp in tps:
            if starts[tp] >= ends[tp]:
                continue
            client.seek(tp, starts[tp])
        pending = {tp for tp in tps if starts[tp] < ends[tp]}
        deadline = time.monotonic() + max(timeout * 4, 30.0) + total / 2000.0
        while pending and time.monotonic() < deadline:
            try:
                batch = client.poll(timeout_ms=int(timeout * 1000), max_records=2000)
            except Exception as exc:  # noqa: BLE001
                _fail(bootstrap, "reading %s" % topic, exc)
            for tp, records in batch.items():
                for record in records:
                    if record.offset >= ends[tp] or record.timestamp < int(timestamp_ms):
                        # past the end taken at the start, or before the point: the broker's lookup by time is
                        # where the read starts (some brokers answer it by append time), the record's own time
                        # decides
                        continue
                    try:
                        value = json.loads(record.value)
                        if not isinstance(value, dict):
                            raise ValueError("not an object")
                    except (TypeError, ValueError):
                        unreadable += 1
                        continue
                    value["_timestamp_ms"] = record.timestamp
                    value["_where"] = "%s[%d]@%d" % (tp.topic, tp.partition, record.offset)
                    events.append(value)
            for tp in list(pending):
                if client.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    client.pause(tp)
        if pending:
            raise KafkaOpsError("Kafka %s: reading %s did not reach the end offsets in time (partitions %s): the "
                                "broker is too slow or lost them; run again" % (
                                    bootstrap, topic, ", ".join(str(tp.partition) for tp in pending)))
        return {"events": events, "unreadable": unreadable, "read": len(events) + unreadable,
                "coverage": {"complete": not gaps, "gaps": gaps},
                "partitions": {tp.partition: {"from": starts[tp], "to": ends[tp], "beginning": begins[tp]}
                               for tp in tps}}
    finally:
        client.close()


def _poll_one(client, tp, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.poll(timeout_ms=int(timeout * 1000), max_records=1)
        for records in batch.values():
            if records:
                return records[0]
    return None


def publish(bootstrap, topic, key, event, timeout=5.0, security=None, check_mode=False, dedupe_last=200):
    """Publish ``event`` (a dict, as JSON) under ``key`` with acks=all, unless an event with that key is already
    among the last ``dedupe_last`` events of the partitions (a re-run publishes nothing twice)."""
    kafka = _kafka()
    already = _find_key(bootstrap, topic, key, timeout, security, dedupe_last) if dedupe_last else None
    if already:
        return {"changed": False, "published": None, "already": already}
    if check_mode:
        return {"changed": True, "published": None, "already": None}
    cfg = _config(bootstrap, timeout, security)
    cfg.update({"acks": "all", "linger_ms": 0, "max_block_ms": int(timeout * 1000)})
    cfg.pop("request_timeout_ms", None)
    cfg["request_timeout_ms"] = int(timeout * 1000)
    try:
        producer = kafka.KafkaProducer(**cfg)
    except Exception as exc:  # noqa: BLE001
        _fail(bootstrap, "connecting a producer", exc)
    try:
        try:
            meta = producer.send(topic, key=key.encode(), value=json.dumps(event, sort_keys=True).encode()) \
                .get(timeout=timeout)
        except Exception as exc:  # noqa: BLE001
            _fail(bootstrap, "publishing on %s" % topic, exc)
        return {"changed": True, "published": {"topic": topic, "partition": meta.partition, "offset": meta.offset},
                "already": None}
    finally:
        producer.close(timeout=2)


def _find_key(bootstrap, topic, key, timeout, security, last):
    client = consumer(bootstrap, timeout, security)
    try:
        try:
            parts = client.partitions_for_topic(topic)
        except Exception as exc:  # noqa: BLE001
            _fail(bootstrap, "reading %s" % topic, exc)
        if not parts:
            return None  # the topic does not exist yet: nothing was published (the producer creates it, or fails)
        kafka = _kafka()
        tps = [kafka.TopicPartition(topic, p) for p in sorted(parts)]
        ends = client.end_offsets(tps)
        begins = client.beginning_offsets(tps)
        client.assign(tps)
        pending = set()
        for tp in tps:
            start = max(begins[tp], ends[tp] - last)
            if start < ends[tp]:
                client.seek(tp, start)
                pending.add(tp)
            else:
                client.pause(tp)
        wanted = key.encode()
        deadline = time.monotonic() + max(timeout * 2, 10.0)
        while pending and time.monotonic() < deadline:
            batch = client.poll(timeout_ms=int(timeout * 1000), max_records=500)
            for tp, records in batch.items():
                for record in records:
                    if record.key == wanted:
                        return "%s[%d]@%d" % (tp.topic, tp.partition, record.offset)
            for tp in list(pending):
                if client.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    client.pause(tp)
        if pending:
            raise KafkaOpsError("Kafka %s: could not read the end of %s to check for an earlier DR event; run again"
                                % (bootstrap, topic))
        return None
    finally:
        client.close()
