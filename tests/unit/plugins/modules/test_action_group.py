"""module_defaults for group/immersiverse.dr.postgres reach every module that takes the connection options."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[4]


def test_every_module_with_the_connection_options_is_in_the_postgres_group():
    group = set(yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["action_groups"]["postgres"])
    # connection_argument_spec() itself, or a spec of _pg's built on it (facts_argument_spec, promote_argument_spec)
    pg = "".join(p.read_text() for p in (ROOT / "plugins" / "module_utils" / "_pg").glob("*.py"))
    built_on = set(re.findall(
        r"def (\w+_argument_spec)\(\):\n    spec = (?:pg_connection\.)?connection_argument_spec\(\)",
        pg))
    assert built_on, "no argument spec of _pg is built on connection_argument_spec: the test reads the wrong files"
    takes = {p.stem for p in (ROOT / "plugins" / "modules").glob("*.py")
             if "connection_argument_spec()" in p.read_text() or any(f".{f}()" in p.read_text() for f in built_on)}
    assert takes and takes == group, f"missing {sorted(takes - group)}, extra {sorted(group - takes)}"
