"""module_defaults for group/immersiverse.dr.postgres reach every module that takes the connection options."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[4]


def test_every_module_with_the_connection_options_is_in_the_postgres_group():
    group = set(yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["action_groups"]["postgres"])
    takes = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")
             if "connection_argument_spec()" in p.read_text()}
    assert takes and takes == group, f"missing {sorted(takes - group)}, extra {sorted(group - takes)}"
