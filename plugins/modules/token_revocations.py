#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: token_revocations
short_description: After a recovery to a point, put back every token revocation made after it
version_added: 0.12.0
description:
  - A database recovered to T has forgotten every token revoked after T, so those tokens would be valid again.
    This reads the revocations after T (minus O(margin_seconds)) from the revocation event stream (every Kafka
    source in O(kafka_sources)) and from the revocations cached in Redis (O(redis_sources)), and inserts the
    missing ones into C(token_blacklist) (C(ON CONFLICT DO NOTHING)). Revocations already expired are skipped (an
    expired token is invalid anyway).
  - When the stream cannot prove it holds every revocation after T (a required source did not answer, retention
    removed events after T, an event could not be read), a cut-off is recorded in C(token_revocation_cutoff) with
    O(on_gap=cutoff) (every token issued before it is invalid, so every user signs in again) and the result says so;
    with O(on_gap=fail) the module fails instead and changes nothing more.
  - Then it verifies that every revocation it saw (not expired) is in C(token_blacklist).
  - Idempotent. A re-run inserts nothing and records no second cut-off for the same O(cutoff_key).
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
  - immersiverse.dr.attributes.action_group_postgres
  - immersiverse.dr.postgres
attributes:
  check_mode:
    support: full
    details: Reads every source and the database and returns what it would insert and whether it would record a
      cut-off.
  diff_mode:
    support: none
  platform:
    details: Runs on the controller (C(delegate_to localhost)), with kafka-python, redis and psycopg2; it reaches
      the database as the application does (O(login_host), the application role).
options:
  recovery_point:
    description: The point the database was recovered to (ISO 8601 with a zone), for example the restore's
      C(recovered_to_time).
    type: str
    required: true
  kafka_sources:
    description: The revocation event streams to read (each region's broker, or a mirrored topic).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Name of the source in the report (the region).
        type: str
      bootstrap:
        description: C(host:port) of its brokers, as the controller reaches them.
        type: str
        required: true
      topic:
        description: The revocation topic.
        type: str
        default: auth.token-revocations
      required:
        description: When this source does not answer, the gap is not covered (a cut-off, or a failure).
        type: bool
        default: true
      security:
        description:
          - How the client authenticates, as O(immersiverse.dr.kafka_preflight#module:security) of
            M(immersiverse.dr.kafka_preflight).
        type: dict
        suboptions:
          security_protocol:
            description: The Kafka security protocol.
            type: str
            choices: [PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL]
          sasl_mechanism:
            description: SASL mechanism.
            type: str
          sasl_plain_username:
            description: SASL user.
            type: str
          sasl_plain_password:
            description: SASL password; never logged or returned.
            type: str
          ssl_cafile:
            description: CA bundle on the controller.
            type: path
          ssl_certfile:
            description: Client certificate on the controller.
            type: path
          ssl_keyfile:
            description: Client key on the controller.
            type: path
          ssl_check_hostname:
            description: Verify the brokers' host names.
            type: bool
  redis_sources:
    description: Redis servers whose cached revocations (JSON values of keys matching C(pattern)) are read too.
      They are extra evidence, never proof of coverage (a cache expires).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name of the source in the report (the region).
        type: str
      url:
        description: C(redis://host:port/db) as the controller reaches it.
        type: str
        required: true
      password:
        description: Redis password; never logged or returned.
        type: str
      pattern:
        description: Keys holding one revocation each.
        type: str
        default: revoked:*
  margin_seconds:
    description: Revocations this many seconds before the recovery point are read too (clock skew between the
      database and the brokers).
    type: int
    default: 60
  default_ttl_seconds:
    description: The expiry given to a revocation whose event carries none; at least the longest token lifetime.
    type: int
    default: 86400
  on_gap:
    description: What to do when the stream cannot prove it covers the gap after the recovery point.
    type: str
    choices: [cutoff, fail]
    default: cutoff
  cutoff_key:
    description: Identifies this recovery, so that a re-run records no second cut-off. Default C(recovery:<point>).
    type: str
  timeout:
    description: Seconds each Kafka or Redis request may take.
    type: float
    default: 5
requirements:
  - kafka-python, redis and psycopg2 on the controller
"""

EXAMPLES = r"""
- name: Revocations after the recovery point are back in token_blacklist
  immersiverse.dr.token_revocations:
    recovery_point: "{{ restore_result.recovery.recovered_to_time }}"
    kafka_sources:
      - {name: primary, bootstrap: "kafka-1.primary.internal:9092"}
      - {name: secondary, bootstrap: "kafka-1.secondary.internal:9092", required: false}
    redis_sources:
      - {name: primary, url: "redis://10.0.0.5:6379/0"}
    login_host: db.primary.internal
    login_user: auth_app
    login_password: "{{ vault_auth_app_password }}"
    login_db: authdb
  delegate_to: localhost
  register: revocations
"""

RETURN = r"""
since:
  description: The recovery point, normalised to UTC.
  returned: always
  type: str
sources:
  description: Per source, whether it answered, how many events it had and used, and the stream's coverage.
  returned: always
  type: list
  elements: dict
seen:
  description: Distinct revocations read after the point.
  returned: always
  type: int
reapplied:
  description: Revocations inserted into token_blacklist (in check mode, that would be).
  returned: always
  type: int
already_present:
  description: Revocations the database already had.
  returned: always
  type: int
expired:
  description: Revocations skipped because they have expired.
  returned: always
  type: int
gaps:
  description: Why the stream does not cover the gap (empty when it does).
  returned: always
  type: list
  elements: str
cutoff:
  description: The cut-off recorded (not_before, reason, run_key), or null when the stream covered the gap.
  returned: always
  type: dict
verified:
  description: Every revocation seen is in token_blacklist (null in check mode).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import connection as pg_connection
from ansible_collections.immersiverse.dr.plugins.module_utils._service import revocations
from ansible_collections.immersiverse.dr.plugins.module_utils._service import spec as service_spec


def main():
    argument_spec = pg_connection.connection_argument_spec()
    argument_spec.update(
        recovery_point=dict(type="str", required=True),
        kafka_sources=dict(type="list", elements="dict", required=True, options=dict(
            name=dict(type="str"),
            bootstrap=dict(type="str", required=True),
            topic=dict(type="str", default="auth.token-revocations"),
            required=dict(type="bool", default=True),
            security=dict(type="dict", options=service_spec.kafka_security_spec()),
        )),
        redis_sources=dict(type="list", elements="dict", default=[], options=dict(
            name=dict(type="str"),
            url=dict(type="str", required=True, no_log=True),
            password=dict(type="str", no_log=True),
            pattern=dict(type="str", default="revoked:*"),
        )),
        margin_seconds=dict(type="int", default=60),
        default_ttl_seconds=dict(type="int", default=86400),
        on_gap=dict(type="str", default="cutoff", choices=["cutoff", "fail"]),
        cutoff_key=dict(type="str", no_log=False),
        timeout=dict(type="float", default=5),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    kafka_sources = []
    for src in p["kafka_sources"]:
        item = dict(src, default_ttl=p["default_ttl_seconds"])
        item["security"] = dict((k, v) for k, v in (src.get("security") or {}).items() if v is not None)
        kafka_sources.append(item)
    redis_sources = [dict(src, default_ttl=p["default_ttl_seconds"]) for src in p["redis_sources"]]
    try:
        conn = pg_connection.connect(p)
        try:
            result = revocations.reapply(conn, p["recovery_point"], kafka_sources, redis_sources,
                                         margin_seconds=p["margin_seconds"], on_gap=p["on_gap"],
                                         cutoff_key=p["cutoff_key"], check_mode=module.check_mode,
                                         timeout=p["timeout"])
        finally:
            conn.close()
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg=_errors.message(exc))
    if result["cutoff"]:
        module.warn("The revocation stream does not cover the gap after %s (%s): every token issued before %s is "
                    "now invalid (token_revocation_cutoff): all users must sign in again."
                    % (result["since"], "; ".join(result["gaps"]), result["cutoff"]["not_before"] or "now"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
