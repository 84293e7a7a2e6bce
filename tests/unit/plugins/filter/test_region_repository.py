import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.immersiverse.dr.plugins.filter.region_repository import region_repository

HOSTVARS = {"dr_s3_bucket": "b", "dr_s3_prefix": "auth-db", "dr_s3_region": "", "dr_s3_access_key": "ak",
            "dr_s3_secret_key": "sk", "dr_s3_endpoint_url": "http://127.0.0.1:19000",
            "dr_s3_endpoint_url_from_hosts": "http://primary-svc:9000"}


def test_hosts_and_controller_see_different_endpoints_and_empty_values_are_left_out():
    repo = region_repository(HOSTVARS, "primary")
    assert repo == {"type": "s3", "name": "primary", "bucket": "b", "prefix": "auth-db", "access_key": "ak",
                    "secret_key": "sk", "endpoint_url": "http://primary-svc:9000"}
    assert region_repository(HOSTVARS, "primary", reached_from="controller")["endpoint_url"] == \
        "http://127.0.0.1:19000"
    plain = {k: v for k, v in HOSTVARS.items() if k != "dr_s3_endpoint_url_from_hosts"}
    assert region_repository(plain, "x")["endpoint_url"] == "http://127.0.0.1:19000"


def test_a_region_without_a_bucket_is_an_error():
    with pytest.raises(AnsibleFilterError, match="no dr_s3_bucket"):
        region_repository({"dr_s3_prefix": "p"}, "tertiary")
    with pytest.raises(AnsibleFilterError, match="hosts or controller"):
        region_repository(HOSTVARS, "p", reached_from="both")
