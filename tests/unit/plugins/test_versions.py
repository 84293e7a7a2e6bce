"""galaxy.yml's version in step with the plugins' version_added and the released changelog."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[3]


def version(text):
    return tuple(int(x) for x in str(text).split("."))


def version_added(node):
    """Every version_added in a DOCUMENTATION tree (the plugin's and its options')."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "version_added":
                yield value
            else:
                yield from version_added(value)
    elif isinstance(node, list):
        for item in node:
            yield from version_added(item)


def test_no_plugin_is_newer_than_the_collection_and_every_version_was_released():
    galaxy = version(yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"])
    releases = {version(v) for v in yaml.safe_load((ROOT / "changelogs" / "changelog.yaml").read_text())["releases"]}
    assert galaxy == max(releases) or galaxy > max(releases), "galaxy.yml is behind the released changelog"
    seen = {}
    for path in sorted((ROOT / "plugins").glob("*/*.py")):
        match = re.search(r'^DOCUMENTATION = r?"""(.*?)^"""', path.read_text(), re.S | re.M)
        if not match:
            continue
        for added in version_added(yaml.safe_load(match.group(1))):
            seen[f"{path.parent.name}/{path.name}"] = added
            assert version(added) <= galaxy, f"{path}: version_added {added} is newer than galaxy.yml's {galaxy}"
            assert version(added) in releases or version(added) == galaxy, f"{path}: {added} was never released"
    assert len(seen) > 15, "no DOCUMENTATION read: the test reads the wrong files"
