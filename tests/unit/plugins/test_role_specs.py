"""Role argument specs: every password or secret option is no_log, so argument validation never prints it."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def options(spec):
    for name, opt in (spec.get("options") or {}).items():
        yield name, opt
        yield from options(opt)


def test_every_secret_option_of_every_role_is_no_log():
    checked = 0
    for path in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        for entry, spec in yaml.safe_load(path.read_text())["argument_specs"].items():
            for name, opt in options(spec):
                if any(word in name for word in ("password", "secret", "api_key", "token")):
                    checked += 1
                    assert opt.get("no_log") is True, f"{path.parent.parent.name}/{entry}: {name} is not no_log"
    assert checked >= 4


def test_the_postgresql_version_comes_from_one_variable():
    """Every role's version, bin and data paths follow dr_pg_version: no role default names a major version."""
    import re

    for path in sorted(ROOT.glob("roles/*/defaults/main.yml")) + sorted(ROOT.glob("roles/*/tasks/*.yml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"postgresql[/-]1[0-9]\b|_version: 1[0-9]\s*$|/1[0-9]/(bin|main)", code), \
                f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
