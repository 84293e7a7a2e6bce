# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: region_repository
short_description: A region's S3 repository (the repository option of the collection's modules) from its host variables
version_added: 0.3.0
description:
  - Builds the repository dict the modules take (type, name, bucket, prefix, region, endpoint_url, access_key,
    secret_key) from one of the region's hosts' C(dr_s3_*) variables, leaving out what is not set. The endpoint is
    C(dr_s3_endpoint_url_from_hosts) when set (how database hosts reach S3), else C(dr_s3_endpoint_url).
  - The result carries the secret key; use it in tasks with no_log.
author:
  - immersiverse.dr maintainers (@immersiverse)
options:
  _input:
    description: The host variables of one host of the region (C(hostvars[groups[region][0]])).
    type: dict
    required: true
  name:
    description: The repository's name (the region).
    type: str
    required: true
  reached_from:
    description:
      - C(hosts) - the endpoint as the database hosts reach it (C(dr_s3_endpoint_url_from_hosts), else
        C(dr_s3_endpoint_url)); C(controller) - as the Ansible controller reaches it (C(dr_s3_endpoint_url)).
    type: str
    default: hosts
    choices: [hosts, controller]
"""

EXAMPLES = r"""
- name: The other regions' repositories
  ansible.builtin.set_fact:
    offsite: "{{ offsite + [hostvars[groups[item][0]] | immersiverse.dr.region_repository(item)] }}"
  loop: "{{ dr_regions | reject('equalto', dr_region) | list }}"
  no_log: true
"""

RETURN = r"""
_value:
  description: The repository dict.
  type: dict
"""

from ansible.errors import AnsibleFilterError

FIELDS = (("bucket", "dr_s3_bucket"), ("prefix", "dr_s3_prefix"), ("region", "dr_s3_region"),
          ("access_key", "dr_s3_access_key"), ("secret_key", "dr_s3_secret_key"),
          ("create_check", "dr_s3_create_check"))


def region_repository(hostvars, name, reached_from="hosts"):
    if not hasattr(hostvars, "get"):
        raise AnsibleFilterError("region_repository expects a host's variables (hostvars[host])")
    if not hostvars.get("dr_s3_bucket"):
        raise AnsibleFilterError("region %s has no dr_s3_bucket: its repository is unknown" % name)
    repo = {"type": "s3", "name": name}
    for key, var in FIELDS:
        value = hostvars.get(var)
        if value not in (None, ""):
            repo[key] = value
    if reached_from not in ("hosts", "controller"):
        raise AnsibleFilterError("region_repository: reached_from is hosts or controller, not %r" % (reached_from,))
    endpoint = hostvars.get("dr_s3_endpoint_url")
    if reached_from == "hosts":
        endpoint = hostvars.get("dr_s3_endpoint_url_from_hosts") or endpoint
    if endpoint:
        repo["endpoint_url"] = endpoint
    return repo


class FilterModule(object):
    def filters(self):
        return {"region_repository": region_repository}
