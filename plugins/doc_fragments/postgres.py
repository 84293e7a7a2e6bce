# -*- coding: utf-8 -*-
# Copyright: (c) 2026, immersiverse.dr contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    # The PostgreSQL connection options every module of the collection shares. Set them once per play with
    # module_defaults: group/immersiverse.dr.postgres (meta/runtime.yml).
    DOCUMENTATION = r"""
options:
  login_host:
    description:
      - Host name or address of the PostgreSQL server. Empty means the local unix socket.
    type: str
    default: ''
  login_port:
    description:
      - Port of the PostgreSQL server.
    type: int
    default: 5432
  login_user:
    description:
      - The role to connect as. On a database host, leave it C(postgres) and use O(login_unix_socket) with
        C(become_user=postgres) so no password is needed.
    type: str
    default: postgres
  login_password:
    description:
      - Password for O(login_user). Prefer a pgpass file (E(PGPASSFILE)); this value is never logged.
    type: str
    default: ''
  login_unix_socket:
    description:
      - Directory of the server's unix socket (Debian C(/var/run/postgresql)). Wins over O(login_host).
    type: str
    default: ''
  login_db:
    description:
      - Database to connect to.
    type: str
    default: postgres
  connect_timeout:
    description:
      - Seconds to wait for a connection before reporting the server unreachable.
    type: int
    default: 5
  ssl_mode:
    description:
      - libpq C(sslmode) for TCP connections.
    type: str
    default: prefer
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
requirements:
  - psycopg2 on the host the module runs on
"""
