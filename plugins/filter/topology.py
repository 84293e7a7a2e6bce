# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: topology
short_description: Who serves - the regions' replication topology from pg_info results
version_added: 0.1.0
description:
  - Takes, per database host, its region and its M(immersiverse.dr.pg_info) result and returns the current primary,
    split brain (two writable primaries of the same cluster), foreign primaries (another system identifier),
    unreachable hosts and a printable table.
author:
  - immersiverse.dr maintainers (@immersiverse)
options:
  _input:
    description: List of dicts with keys C(host), C(region), C(facts).
    type: list
    elements: dict
    required: true
  services:
    description: Region name to M(immersiverse.dr.region_health) result.
    type: dict
  preferred_region:
    description: Region whose primary wins when unrelated clusters tie.
    type: str
  regions:
    description: Region names in the order the rows are listed.
    type: list
    elements: str
notes:
  - The same file gives C(promotion_refusals) (why a host must not be promoted now), C(failover_plan) (who is
    fenced, promoted and follows in an unplanned failover to a region, with the candidate's lag and the refusals),
    C(switchover_plan), C(rejoin_refusals), C(lsn_int) (an LSN as an integer, to compare), and for synchronous mode
    C(synchronous_standbys) (the standby names a primary in a region waits for) and C(synchronous_setting) (the
    synchronous_standby_names value for them); see docs/failover.md.
"""

EXAMPLES = r"""
- name: Summarise
  ansible.builtin.set_fact:
    detect_summary: "{{ hosts_facts | immersiverse.dr.topology(services=by_region, preferred_region='primary') }}"
"""

RETURN = r"""
_value:
  description: current_primary, current_primary_region, primaries, split_brain, foreign_primaries, unreachable,
    hosts (one row per host), services, unhealthy_services and table (lines of text).
  type: dict
"""

from ansible_collections.immersiverse.dr.plugins.module_utils._runbook import decisions as runbook_decisions
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook.topology import promotion_blockers
from ansible_collections.immersiverse.dr.plugins.module_utils._runbook.topology import summarise


def topology(hosts, services=None, preferred_region=None, regions=None):
    return summarise(hosts, services=services, preferred_region=preferred_region, regions=regions)


def promotion_refusals(summary, candidate, isolated=None, restoring=False):
    return promotion_blockers(summary, candidate, isolated or (), restoring=restoring)


def failover_plan(summary, target_region, max_lag=None, force=False, sync_regions=None):
    max_lag = max_lag or {}
    return runbook_decisions.failover_plan(summary, target_region, max_lag_bytes=max_lag.get("bytes", 16 << 20),
                                           max_lag_seconds=max_lag.get("seconds", 30), force=bool(force),
                                           sync_regions=sync_regions or ())


def lsn_int(lsn):
    return runbook_decisions.lsn_int(lsn)


def switchover_plan(summary, target_region):
    return runbook_decisions.switchover_plan(summary, target_region)


def rejoin_refusals(summary, host):
    return runbook_decisions.rejoin_refusals(summary, host)


def synchronous_standbys(host_regions, region, sync_regions):
    return runbook_decisions.synchronous_standbys(host_regions, region, sync_regions)


def synchronous_setting(names, count=1):
    return runbook_decisions.synchronous_setting(names, count)


class FilterModule(object):
    def filters(self):
        return {"topology": topology, "promotion_refusals": promotion_refusals, "failover_plan": failover_plan,
                "switchover_plan": switchover_plan, "rejoin_refusals": rejoin_refusals, "lsn_int": lsn_int,
                "synchronous_standbys": synchronous_standbys, "synchronous_setting": synchronous_setting}
