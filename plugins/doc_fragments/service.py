# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The options the service-layer modules share (immersiverse.dr.service.kafka, immersiverse.dr.service.redis);
    # the argument specs are _service/spec.py.

    KAFKA = r"""
options:
  bootstrap:
    description:
      - Comma-separated C(host:port) of the region's Kafka brokers, as the controller reaches them.
    type: str
    required: true
  security:
    description:
      - How the client authenticates; empty means plaintext without authentication.
    type: dict
    suboptions:
      security_protocol:
        description: The Kafka security protocol.
        type: str
        choices: [PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL]
      sasl_mechanism:
        description: SASL mechanism, for example C(SCRAM-SHA-512) or C(PLAIN).
        type: str
      sasl_plain_username:
        description: SASL user.
        type: str
      sasl_plain_password:
        description: SASL password; never logged or returned.
        type: str
      ssl_cafile:
        description: CA bundle on the controller that signed the brokers' certificates.
        type: path
      ssl_certfile:
        description: Client certificate on the controller, for mutual TLS.
        type: path
      ssl_keyfile:
        description: Client key on the controller, for mutual TLS.
        type: path
      ssl_check_hostname:
        description: Verify the brokers' host names against their certificates.
        type: bool
  timeout:
    description: Seconds each broker request may take.
    type: float
    default: 5
requirements:
  - kafka-python on the controller
"""

    REDIS = r"""
options:
  url:
    description:
      - C(redis://host:port/db), C(rediss://...) or C(unix:///path) of the region's Redis, as the controller
        reaches it.
    type: str
    required: true
  password:
    description: Redis password (AUTH); never logged or returned. A password in O(url) works too.
    type: str
  timeout:
    description: Seconds each Redis request may take.
    type: float
    default: 5
requirements:
  - redis (redis-py) on the controller
"""
