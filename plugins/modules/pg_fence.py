#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: pg_fence
short_description: Fence a PostgreSQL host so it never starts as a primary, or lift the fence
version_added: 0.6.0
description:
  - O(state=fenced) makes the Debian cluster's C(start.conf) say C(disabled), so PostgreSQL does not start, neither at
    boot nor by hand through pg_ctlcluster or the systemd unit (C(manual) would only skip the start at boot). It
    also writes the fence marker C(immersiverse-dr-fence.json) beside it, which says why and when the host was
    fenced. M(immersiverse.dr.pg_info) (O(immersiverse.dr.pg_info#module:fence_dir)) and C(playbooks/rejoin.yml)
    read the marker.
  - O(state=unfenced) makes C(start.conf) say C(auto) again and removes the marker, once the host is a standby of the
    serving primary.
  - Compared by meaning, so a re-run changes nothing. A C(start.conf) that already says C(disabled) is left as it is,
    and an existing marker is kept, so the first fence's reason and time survive.
  - Writes each file atomically (temporary file, fsync, rename, fsync of the directory), owned like the directory.
  - Neither stops nor starts PostgreSQL. The isolate role stops it right after fencing.
author:
  - immersiverse.dr maintainers (@immersiverse)
extends_documentation_fragment:
  - immersiverse.dr.attributes
  - immersiverse.dr.attributes.platform
attributes:
  check_mode:
    support: full
    details: Reads the files and returns what it would change (RV(actions)); writes nothing.
  diff_mode:
    support: full
    details: The fence state (start.conf, marker) before and after.
  platform:
    details: Runs on the database host as root (C(become=true)) or as the owner of the configuration directory.
options:
  conf_dir:
    description: The cluster's configuration directory (Debian C(/etc/postgresql/15/main)).
    type: path
    required: true
  state:
    description: C(fenced) or C(unfenced).
    type: str
    required: true
    choices: [fenced, unfenced]
  marker:
    description: What the fence marker says (for example C(fenced_at), C(reason), C(by)). Only written when no marker
      exists yet.
    type: dict
    default: {}
"""

EXAMPLES = r"""
- name: Keep the old primary down at boot, and say why
  immersiverse.dr.pg_fence:
    conf_dir: /etc/postgresql/15/main
    state: fenced
    marker:
      fenced_at: "{{ now(utc=true, fmt='%Y-%m-%dT%H:%M:%SZ') }}"
      reason: failover to secondary
  become: true

- name: It streams from the serving primary now
  immersiverse.dr.pg_fence:
    conf_dir: /etc/postgresql/15/main
    state: unfenced
  become: true
"""

RETURN = r"""
actions:
  description: What was (or, in check mode, would be) changed.
  returned: always
  type: list
  elements: str
  sample: ["start.conf: auto -> disabled", "fence marker written"]
fence:
  description: The fence state after the call (C(fenced), C(start_conf), C(marker)).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.immersiverse.dr.plugins.module_utils import _errors
from ansible_collections.immersiverse.dr.plugins.module_utils._pg import fence as pg_fence


def main():
    module = AnsibleModule(argument_spec=dict(conf_dir=dict(type="path", required=True),
                                              state=dict(type="str", required=True, choices=["fenced", "unfenced"]),
                                              marker=dict(type="dict", default={})),
                           supports_check_mode=True)
    try:
        res = pg_fence.set_fence(module.params["conf_dir"], module.params["state"] == "fenced", module.params["marker"],
                                 check_mode=module.check_mode)
    except _errors.ENGINE_ERRORS as exc:
        module.fail_json(msg="cannot %s %s: %s" % ("fence" if module.params["state"] == "fenced" else "unfence",
                                                   module.params["conf_dir"], exc))
    result = {"changed": res["changed"], "actions": res["actions"], "fence": res["after"]}
    if module._diff:
        result["diff"] = {"before": res["before"], "after": res["after"]}
    module.exit_json(**result)


if __name__ == "__main__":
    main()
