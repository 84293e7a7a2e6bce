import pytest
import yaml

from ansible_collections.immersiverse.dr.plugins.doc_fragments.repository import ModuleDocFragment
from ansible_collections.immersiverse.dr.plugins.module_utils._repo import spec as repo_spec


@pytest.mark.parametrize("attr, option", [("DOCUMENTATION", "repository"), ("OFFSITE", "offsite"),
                                          ("REPOSITORIES", "repositories")])
def test_each_copy_documents_exactly_the_argument_spec(attr, option):
    doc = yaml.safe_load(getattr(ModuleDocFragment, attr))
    sub = doc["options"][option]["suboptions"]
    spec = repo_spec.repository_argument_spec()
    assert set(sub) == set(spec)
    for key, value in spec.items():
        assert sub[key]["type"] == value["type"], key
        assert sub[key].get("default") == value.get("default"), key
        assert sub[key].get("choices") == value.get("choices"), key
    attrs = ("DOCUMENTATION", "OFFSITE", "REPOSITORIES")
    copies = [yaml.safe_load(getattr(ModuleDocFragment, a))["options"] for a in attrs]
    assert copies[0]["repository"]["suboptions"] == copies[1]["offsite"]["suboptions"] == \
        copies[2]["repositories"]["suboptions"]
