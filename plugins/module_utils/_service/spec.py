# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs the service-layer modules share (documented by doc_fragments/service.py)."""

from __future__ import annotations


def kafka_security_spec():
    return dict(
        security_protocol=dict(type="str", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]),
        sasl_mechanism=dict(type="str"),
        sasl_plain_username=dict(type="str"),
        sasl_plain_password=dict(type="str", no_log=True),
        ssl_cafile=dict(type="path"),
        ssl_certfile=dict(type="path"),
        ssl_keyfile=dict(type="path"),
        ssl_check_hostname=dict(type="bool"),
    )


def kafka_spec():
    return dict(
        bootstrap=dict(type="str", required=True),
        security=dict(type="dict", options=kafka_security_spec()),
        timeout=dict(type="float", default=5),
    )


def redis_spec():
    return dict(
        # a redis:// URL may carry the password: never logged
        url=dict(type="str", required=True, no_log=True),
        password=dict(type="str", no_log=True),
        timeout=dict(type="float", default=5),
    )


def security(params):
    """The security options that were set."""
    return {k: v for k, v in (params.get("security") or {}).items() if v is not None}
