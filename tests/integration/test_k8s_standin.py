"""The lab's Kubernetes API stand-in (lab/k8s_standin.py, kmock's KubernetesEmulator), driven by real clients.

Each test starts its own stand-in process on a free loopback port and stops it (SIGTERM) at teardown. The clients
are the official ``kubernetes`` Python client and ``ansible-playbook`` with ``kubernetes.core``: the same code
paths the collection uses against a real cluster. What the stand-in does NOT do (controllers, admission, pods,
readiness) is in docs/kubernetes-standin.md; the assertions on ``readyReplicas`` below pin that gap down.
The rollout stand-in (``--ready-after``, off by default, not a controller: no pods) has its own tests at the end.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import watch
from kubernetes.client.rest import ApiException

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STANDIN = REPO / "lab" / "k8s_standin.py"
MANIFEST = REPO / "lab" / "k8s" / "auth-service.yml.j2"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
REGION_VARS = {"region": "secondary", "db_host": "pg-secondary.lab.invalid", "db_port": 5432}
READY_AFTER = 0.5  # --ready-after of the rollout_standin fixture
NEVER_READY = "lab.immersiverse.dr/never-ready"


class StandIn:
    def __init__(self, port: int, process: subprocess.Popen, log: Path, pidfile: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.process = process
        self.log = log
        self.pidfile = pidfile

    def api(self) -> k8s.ApiClient:
        config = k8s.Configuration()
        config.host = self.url
        config.api_key = {"authorization": "Bearer dummy-token"}
        config.verify_ssl = False
        return k8s.ApiClient(config)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    with run_standin(tmp_path) as running:
        yield running


@pytest.fixture
def rollout_standin(tmp_path: Path) -> Iterator[StandIn]:
    """A stand-in with the rollout stand-in on: Deployments report ready 0.5 s after a create or spec change."""
    with run_standin(tmp_path, "--ready-after", str(READY_AFTER)) as running:
        yield running


@contextlib.contextmanager
def run_standin(tmp_path: Path, *extra_args: str) -> Iterator[StandIn]:
    port = _free_port()
    log = tmp_path / "standin.log"
    pidfile = tmp_path / "standin.pid"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(STANDIN),
                "--port",
                str(port),
                "--region",
                "secondary",
                "--pidfile",
                str(pidfile),
                *extra_args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        deadline = time.monotonic() + 20
        while "ready region=secondary" not in log.read_text():
            if process.poll() is not None:
                pytest.fail(f"the stand-in exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the stand-in did not get ready in 20 s:\n{log.read_text()}")
            time.sleep(0.05)
        assert pidfile.read_text().strip() == str(process.pid)
        yield StandIn(port, process, log, pidfile)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            try:
                returncode = process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
                pytest.fail("the stand-in ignored SIGTERM for 5 s")
            assert returncode == 0, log.read_text()
            assert time.monotonic() - started < 3, "the stand-in is slow to exit"
            assert not pidfile.exists(), "the pidfile outlived the stand-in"
        text = log.read_text()
        assert "Traceback" not in text and "Task was destroyed" not in text, text


def render_manifest(**overrides: Any) -> list[dict[str, Any]]:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    text = env.from_string(MANIFEST.read_text()).render(**{**REGION_VARS, **overrides})
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in docs}


def test_official_client_create_read_isolate_reopen_delete(standin: StandIn) -> None:
    api = standin.api()
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    policy, autoscaling = k8s.PolicyV1Api(api), k8s.AutoscalingV2Api(api)
    docs = by_kind(render_manifest())
    assert set(docs) == {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }

    core.create_namespace(docs["Namespace"])
    core.create_namespaced_config_map("auth", docs["ConfigMap"])
    core.create_namespaced_service("auth", docs["Service"])
    created = apps.create_namespaced_deployment("auth", docs["Deployment"])
    policy.create_namespaced_pod_disruption_budget("auth", docs["PodDisruptionBudget"])
    autoscaling.create_namespaced_horizontal_pod_autoscaler("auth", docs["HorizontalPodAutoscaler"])

    # Read back: what was written, plus the metadata an API server sets.
    assert core.read_namespace("auth").status.phase == "Active"
    assert core.read_namespaced_config_map("auth-service-db", "auth").data["DB_HOST"] == "pg-secondary.lab.invalid"
    deployment = apps.read_namespaced_deployment("auth-service", "auth")
    assert deployment.spec.replicas == 3
    assert deployment.metadata.namespace == "auth"
    assert deployment.metadata.uid == created.metadata.uid
    assert deployment.metadata.generation == 1
    assert deployment.metadata.resource_version
    container = deployment.spec.template.spec.containers[0]
    assert container.env_from[0].config_map_ref.name == "auth-service-db"
    assert container.env[0].value_from.secret_key_ref.name == "auth-service-db"
    # No controller runs here: nothing ever reports pods as ready.
    assert deployment.status is None or deployment.status.ready_replicas is None
    assert policy.read_namespaced_pod_disruption_budget("auth-service", "auth").spec.min_available == 2
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("auth-service", "auth")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (3, 10)
    assert hpa.spec.metrics[0].resource.target.average_utilization == 70
    listed = apps.list_namespaced_deployment("auth", label_selector="app.kubernetes.io/name=auth-service")
    assert [d.metadata.name for d in listed.items] == ["auth-service"]
    assert apps.list_namespaced_deployment("auth", label_selector="app.kubernetes.io/name=other").items == []

    # Isolate: the app scaled to 0 through the scale subresource.
    scale = apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 0}})
    assert (scale.kind, scale.spec.replicas) == ("Scale", 0)
    assert scale.status.selector == "app.kubernetes.io/name=auth-service"
    isolated = apps.read_namespaced_deployment("auth-service", "auth")
    assert isolated.spec.replicas == 0
    assert isolated.metadata.generation == 2
    assert int(isolated.metadata.resource_version) > int(deployment.metadata.resource_version)
    assert isolated.spec.template == deployment.spec.template  # only replicas changed

    # Reopen: back to 3 with a plain patch of spec.replicas.
    assert apps.patch_namespaced_deployment("auth-service", "auth", {"spec": {"replicas": 3}}).spec.replicas == 3
    assert apps.read_namespaced_deployment_scale("auth-service", "auth").spec.replicas == 3

    # Delete everything; the objects are gone.
    autoscaling.delete_namespaced_horizontal_pod_autoscaler("auth-service", "auth")
    policy.delete_namespaced_pod_disruption_budget("auth-service", "auth")
    apps.delete_namespaced_deployment("auth-service", "auth")
    core.delete_namespaced_service("auth-service", "auth")
    core.delete_namespaced_config_map("auth-service-db", "auth")
    core.delete_namespace("auth")
    for read in (lambda: apps.read_namespaced_deployment("auth-service", "auth"), lambda: core.read_namespace("auth")):
        with pytest.raises(ApiException) as gone:
            read()
        assert gone.value.status == 404
    assert apps.list_deployment_for_all_namespaces().items == []


def test_standin_guards_like_an_api_server(standin: StandIn) -> None:
    api = standin.api()
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    docs = by_kind(render_manifest())
    core.create_namespace(docs["Namespace"])
    apps.create_namespaced_deployment("auth", docs["Deployment"])

    def status_of(call) -> int:
        with pytest.raises(ApiException) as error:
            call()
        return error.value.status

    assert status_of(lambda: apps.create_namespaced_deployment("auth", docs["Deployment"])) == 409
    stale = apps.read_namespaced_deployment("auth-service", "auth")
    apps.patch_namespaced_deployment("auth-service", "auth", {"metadata": {"labels": {"drill": "1"}}})
    stale.spec.replicas = 1
    assert status_of(lambda: apps.replace_namespaced_deployment("auth-service", "auth", stale)) == 409
    # dryRun=All (what check mode sends) answers but stores nothing.
    apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 0}}, dry_run="All")
    assert apps.read_namespaced_deployment("auth-service", "auth").spec.replicas == 3
    # Only the app's resources are served.
    assert status_of(lambda: core.list_namespaced_pod("auth")) == 404
    assert (
        status_of(lambda: apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": -1}}))
        == 422
    )


def test_watch_streams_changes_and_honours_timeout(standin: StandIn) -> None:
    core = k8s.CoreV1Api(standin.api())
    core.create_namespace({"metadata": {"name": "auth"}})
    core.create_namespaced_config_map("auth", {"metadata": {"name": "unwatched"}, "data": {}})

    opened = threading.Event()

    @functools.wraps(core.list_namespaced_config_map)  # the watch reads the return type from its docstring
    def list_and_tell(*args, **kwargs):
        response = core.list_namespaced_config_map(*args, **kwargs)
        opened.set()  # the server answered the watch request: from here on it streams every change
        return response

    def writer() -> None:
        if not opened.wait(10):
            return
        core.create_namespaced_config_map("auth", {"metadata": {"name": "w", "labels": {"drill": "1"}}})
        core.patch_namespaced_config_map("w", "auth", {"data": {"DB_HOST": "pg-tertiary"}})
        core.create_namespaced_config_map("auth", {"metadata": {"name": "other"}})
        core.delete_namespaced_config_map("w", "auth")

    thread = threading.Thread(target=writer)
    thread.start()
    started = time.monotonic()
    events = [
        (event["type"], event["object"].metadata.name)
        for event in watch.Watch().stream(list_and_tell, "auth", label_selector="drill=1", timeout_seconds=2)
    ]
    thread.join(5)
    assert opened.is_set(), "the watch request was never answered"
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    assert 1.5 < time.monotonic() - started < 5  # the server ended the stream at timeoutSeconds


def test_standin_refuses_a_non_loopback_bind(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(STANDIN), "--port", "0", "--region", "primary", "--host", "0.0.0.0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "only listens on loopback" in result.stderr


def run_playbook(tmp_path: Path, standin: StandIn, tasks: list[dict[str, Any]]) -> tuple[dict[str, int], str]:
    """Run a one-play playbook against the stand-in; returns the localhost recap counters and the output."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-playbook not found next to {sys.executable}")
    play = [
        {
            "name": "auth-service on the Kubernetes stand-in",
            "hosts": "localhost",
            "connection": "local",
            "gather_facts": False,
            "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", **REGION_VARS},
            "module_defaults": {
                "group/kubernetes.core.k8s": {"host": standin.url, "api_key": "dummy-token", "validate_certs": False}
            },
            "tasks": tasks,
        }
    ]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    config = tmp_path / "ansible.cfg"
    config.write_text(
        "[defaults]\nstdout_callback = ansible.builtin.default\nretry_files_enabled = false\n"
        "localhost_warning = false\n[inventory]\ninventory_unparsed_warning = false\n"
    )
    env = {
        "PATH": f"{ANSIBLE_PLAYBOOK.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),  # kubernetes.core's discovery cache lands here, not in /tmp
        "ANSIBLE_CONFIG": str(config),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"),
    }
    result = subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", "localhost,", str(playbook)],
        check=False,
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    recap = re.search(r"^localhost\s*:\s*(.*)$", result.stdout, re.MULTILINE)
    assert recap is not None, output
    counters = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", recap.group(1))}
    return counters, output


APPLY_MANIFEST = {
    "name": "the app's objects are present",
    "kubernetes.core.k8s": {
        "state": "present",
        "definition": f"{{{{ lookup('ansible.builtin.template', '{MANIFEST}') "
        "| ansible.builtin.from_yaml_all | list }}",
    },
}


def test_ansible_k8s_present_twice_is_idempotent(standin: StandIn, tmp_path: Path) -> None:
    first, output = run_playbook(tmp_path, standin, [APPLY_MANIFEST])
    assert (first["failed"], first["changed"]) == (0, 1), output
    second, output = run_playbook(tmp_path, standin, [APPLY_MANIFEST])
    assert (second["failed"], second["changed"]) == (0, 0), output

    apps = k8s.AppsV1Api(standin.api())
    deployment = apps.read_namespaced_deployment("auth-service", "auth")
    assert deployment.spec.replicas == 3
    assert deployment.metadata.generation == 1  # the second run wrote nothing
    cm = k8s.CoreV1Api(standin.api()).read_namespaced_config_map("auth-service-db", "auth")
    assert cm.data["REGION"] == "secondary"


def test_ansible_isolate_scales_to_zero_and_check_mode_stores_nothing(standin: StandIn, tmp_path: Path) -> None:
    target = {"kind": "Deployment", "name": "auth-service", "namespace": "auth"}
    tasks = [
        APPLY_MANIFEST,
        {
            "name": "check mode: a scale to 0 is only predicted",
            "kubernetes.core.k8s": {
                "state": "present",
                "definition": {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "auth-service", "namespace": "auth"},
                    "spec": {"replicas": 0},
                },
            },
            "check_mode": True,
        },
        # wait: false -- nothing here produces ready replicas, so a wait could only time out.
        {
            "name": "isolate",
            "kubernetes.core.k8s_scale": {**target, "replicas": 0, "wait": False},
            "register": "isolate",
        },
        {"kubernetes.core.k8s_info": target, "register": "after"},
        {
            "ansible.builtin.assert": {
                "that": [
                    "isolate is changed",
                    "after.resources[0].spec.replicas == 0",
                    "after.resources[0].status.readyReplicas is not defined",
                ]
            }
        },
        {
            "name": "isolate again",
            "kubernetes.core.k8s_scale": {**target, "replicas": 0, "wait": False},
            "register": "again",
        },
        {"ansible.builtin.assert": {"that": ["again is not changed"]}},
    ]
    counters, output = run_playbook(tmp_path, standin, tasks)
    assert counters["failed"] == 0, output
    # apply, the check-mode prediction, isolate; "isolate" being a change proves check mode stored nothing.
    assert counters["changed"] == 3, json.dumps(counters) + output
    log = standin.log.read_text()
    assert "ERROR" not in log and "Traceback" not in log, log


# --------------------------------------------------------------------------------------------
# NetworkPolicy (networking.k8s.io/v1): the deny-all policy that isolates a failed region's app
# --------------------------------------------------------------------------------------------

POLICY = "auth-service-deny-all"
DENY_ALL = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {
        "name": "auth-service-deny-all",
        "namespace": "auth",
        "labels": {"app.kubernetes.io/name": "auth-service", "lab.immersiverse.dr/isolation": "true"},
    },
    "spec": {
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "auth-service"}},
        "policyTypes": ["Ingress", "Egress"],
    },
}


def test_official_client_networkpolicy_crud(standin: StandIn) -> None:
    api = standin.api()
    net = k8s.NetworkingV1Api(api)

    # Discovery (read raw: the client's discovery calls add a trailing slash, which the stand-in does not serve):
    # the group is listed, and the resource is namespaced, short name netpol, no subresources.
    def discover(path: str) -> Any:
        with urllib.request.urlopen(f"{standin.url}{path}", timeout=10) as response:
            return json.load(response)

    groups = {g["name"]: g for g in discover("/apis")["groups"]}
    assert groups["networking.k8s.io"]["preferredVersion"]["groupVersion"] == "networking.k8s.io/v1"
    assert discover("/apis/networking.k8s.io")["versions"] == [
        {"groupVersion": "networking.k8s.io/v1", "version": "v1"}
    ]
    served = {r["name"]: r for r in discover("/apis/networking.k8s.io/v1")["resources"]}
    assert set(served) == {"networkpolicies"}
    policies = served["networkpolicies"]
    assert (policies["kind"], policies["namespaced"], policies["shortNames"]) == ("NetworkPolicy", True, ["netpol"])
    assert set(policies["verbs"]) == {"create", "delete", "get", "list", "patch", "update", "watch"}
    assert "networking.k8s.io/v1/networkpolicies" in discover("/standin")["resources"]

    def status_of(call) -> int:
        with pytest.raises(ApiException) as error:
            call()
        return error.value.status

    # Create: server metadata set, a second create is 409, a dry-run create stores nothing.
    dry = net.create_namespaced_network_policy("auth", {**DENY_ALL, "metadata": {"name": "dry"}}, dry_run="All")
    assert dry.metadata.name == "dry"
    created = net.create_namespaced_network_policy("auth", DENY_ALL)
    assert (created.metadata.namespace, created.metadata.generation) == ("auth", 1)
    assert created.metadata.uid and created.metadata.resource_version
    assert status_of(lambda: net.create_namespaced_network_policy("auth", DENY_ALL)) == 409
    assert status_of(lambda: net.read_namespaced_network_policy("dry", "auth")) == 404

    # Read and list, with label and field selectors.
    read = net.read_namespaced_network_policy(POLICY, "auth")
    assert read.spec.pod_selector.match_labels == {"app.kubernetes.io/name": "auth-service"}
    assert read.spec.policy_types == ["Ingress", "Egress"]
    assert read.spec.ingress is None and read.spec.egress is None  # deny-all: no rules at all

    def names(items: list[Any]) -> list[str]:
        return [i.metadata.name for i in items]

    assert names(net.list_namespaced_network_policy("auth", label_selector="lab.immersiverse.dr/isolation").items) == [
        "auth-service-deny-all"
    ]
    assert net.list_namespaced_network_policy("auth", label_selector="lab.immersiverse.dr/isolation!=true").items == []
    assert names(
        net.list_network_policy_for_all_namespaces(field_selector="metadata.name=auth-service-deny-all").items
    ) == ["auth-service-deny-all"]
    assert net.list_namespaced_network_policy("other").items == []

    # Watch: the current objects come first, as ADDED.
    stream = watch.Watch()
    events = []
    for event in stream.stream(net.list_namespaced_network_policy, "auth", timeout_seconds=5):
        events.append((event["type"], event["object"].metadata.name))
        stream.stop()
    assert events == [("ADDED", "auth-service-deny-all")]

    # Patch (strategic merge): rule lists have no merge key, so a patch replaces them whole.
    allow = {"from": [{"podSelector": {"matchLabels": {"role": "probe"}}}], "ports": [{"port": 8080}]}
    net.patch_namespaced_network_policy(POLICY, "auth", {"spec": {"ingress": [allow]}})
    other = {"ports": [{"port": 9090, "protocol": "TCP"}]}
    patched = net.patch_namespaced_network_policy(POLICY, "auth", {"spec": {"ingress": [other]}})
    assert api.sanitize_for_serialization(patched.spec.ingress) == [other]
    assert patched.metadata.generation == 3
    assert patched.spec.pod_selector.match_labels == {"app.kubernetes.io/name": "auth-service"}  # kept
    # A metadata-only change bumps resourceVersion, not generation; an identical write changes nothing.
    labelled = net.patch_namespaced_network_policy(POLICY, "auth", {"metadata": {"labels": {"drill": "1"}}})
    assert labelled.metadata.generation == 3
    assert int(labelled.metadata.resource_version) > int(patched.metadata.resource_version)
    again = net.patch_namespaced_network_policy(POLICY, "auth", {"metadata": {"labels": {"drill": "1"}}})
    assert again.metadata.resource_version == labelled.metadata.resource_version
    # dryRun patch answers but stores nothing.
    net.patch_namespaced_network_policy(POLICY, "auth", {"spec": {"ingress": None}}, dry_run="All")
    assert net.read_namespaced_network_policy(POLICY, "auth").spec.ingress is not None

    # Replace (PUT): back to deny-all; a stale resourceVersion is a 409.
    current = net.read_namespaced_network_policy(POLICY, "auth")
    current.spec.ingress = None
    replaced = net.replace_namespaced_network_policy(POLICY, "auth", current)
    assert replaced.spec.ingress is None and replaced.metadata.generation == 4
    assert status_of(lambda: net.replace_namespaced_network_policy(POLICY, "auth", current)) == 409

    # Delete: a Status, then 404.
    deleted = net.delete_namespaced_network_policy(POLICY, "auth")  # typed "object": the client keeps the dict
    assert (deleted["kind"], deleted["status"], deleted["details"]["name"]) == ("Status", "Success", POLICY)
    assert status_of(lambda: net.read_namespaced_network_policy(POLICY, "auth")) == 404
    assert status_of(lambda: net.delete_namespaced_network_policy(POLICY, "auth")) == 404
    assert net.list_network_policy_for_all_namespaces().items == []


def test_ansible_networkpolicy_present_twice_is_idempotent_then_absent(standin: StandIn, tmp_path: Path) -> None:
    present = {
        "name": "the deny-all policy is present",
        "kubernetes.core.k8s": {"state": "present", "definition": DENY_ALL},
    }
    info = {
        "kubernetes.core.k8s_info": {
            "api_version": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "namespace": "auth",
            "name": "auth-service-deny-all",
        },
        "register": "policy",
    }
    first, output = run_playbook(tmp_path, standin, [present])
    assert (first["failed"], first["changed"]) == (0, 1), output
    second, output = run_playbook(
        tmp_path,
        standin,
        [
            present,
            info,
            {
                "ansible.builtin.assert": {
                    "that": [
                        "policy.resources | length == 1",
                        "policy.resources[0].spec.policyTypes == ['Ingress', 'Egress']",
                        "policy.resources[0].spec.podSelector.matchLabels['app.kubernetes.io/name'] == 'auth-service'",
                    ]
                }
            },
        ],
    )
    assert (second["failed"], second["changed"]) == (0, 0), output
    stored = k8s.NetworkingV1Api(standin.api()).read_namespaced_network_policy("auth-service-deny-all", "auth")
    assert stored.metadata.generation == 1  # the second run wrote nothing

    absent = {
        "kubernetes.core.k8s": {
            "state": "absent",
            "api_version": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "namespace": "auth",
            "name": "auth-service-deny-all",
        }
    }
    third, output = run_playbook(
        tmp_path,
        standin,
        [
            {**absent, "register": "removed"},
            {**absent, "register": "removed_again"},
            info,
            {
                "ansible.builtin.assert": {
                    "that": ["removed is changed", "removed_again is not changed", "policy.resources == []"]
                }
            },
        ],
    )
    assert (third["failed"], third["changed"]) == (0, 1), output


# --------------------------------------------------------------------------------------------
# Rollout stand-in (--ready-after): NOT a controller, no pods exist; it only writes a "rolled out" status
# --------------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll predicate until it returns something truthy or timeout seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def rolled_out(apps: k8s.AppsV1Api, name: str = "auth-service") -> k8s.V1Deployment | None:
    """The Deployment once its status says what a client waiting for a rollout waits for, else None."""
    d = apps.read_namespaced_deployment(name, "auth")
    status = d.status
    done = (
        status is not None
        and (status.observed_generation or 0) >= d.metadata.generation
        and (status.ready_replicas or 0) >= d.spec.replicas
    )
    return d if done else None


def test_rollout_standin_reports_ready_after_the_delay(rollout_standin: StandIn) -> None:
    apps = k8s.AppsV1Api(rollout_standin.api())
    apps.create_namespaced_deployment("auth", by_kind(render_manifest())["Deployment"])
    assert apps.read_namespaced_deployment("auth-service", "auth").status is None  # the delay has not passed

    ready = wait_until(lambda: rolled_out(apps), 10)
    assert ready is not None, apps.read_namespaced_deployment("auth-service", "auth")
    status = ready.status
    assert (
        status.observed_generation,
        status.replicas,
        status.updated_replicas,
        status.ready_replicas,
        status.available_replicas,
    ) == (1, 3, 3, 3, 3)
    assert [(c.type, c.status) for c in status.conditions] == [("Available", "True")]
    assert apps.read_namespaced_deployment_scale("auth-service", "auth").status.replicas == 3

    # A scale (subresource): right after it the status is the old one, then the status write arrives as a
    # MODIFIED watch event with a newer resourceVersion.
    opened = threading.Event()

    @functools.wraps(apps.list_namespaced_deployment)  # the watch reads the return type from its docstring
    def list_and_tell(*args, **kwargs):
        response = apps.list_namespaced_deployment(*args, **kwargs)
        opened.set()
        return response

    right_after: list[k8s.V1Deployment] = []

    def scaler() -> None:
        if opened.wait(10):
            apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 5}})
            right_after.append(apps.read_namespaced_deployment("auth-service", "auth"))

    thread = threading.Thread(target=scaler)
    thread.start()
    stream = watch.Watch()
    events = []
    for event in stream.stream(
        list_and_tell, "auth", resource_version=ready.metadata.resource_version, timeout_seconds=10
    ):
        d = event["object"]
        events.append(
            (
                event["type"],
                d.metadata.generation,
                d.status.observed_generation,
                d.status.ready_replicas,
                int(d.metadata.resource_version),
            )
        )
        if d.status.observed_generation == 2:
            stream.stop()
    thread.join(10)
    assert right_after, "the scale never ran"
    assert right_after[0].metadata.generation == 2
    assert (right_after[0].status.observed_generation, right_after[0].status.ready_replicas) == (1, 3)
    assert [e[:4] for e in events] == [("MODIFIED", 2, 1, 3), ("MODIFIED", 2, 2, 5)], events
    assert events[1][4] > events[0][4]

    # Scale to 0: no replica counts at all, as a real cluster reports it (omitempty).
    apps.patch_namespaced_deployment("auth-service", "auth", {"spec": {"replicas": 0}})
    isolated = apps.read_namespaced_deployment("auth-service", "auth")
    assert (isolated.metadata.generation, isolated.status.observed_generation) == (3, 2)
    zero = wait_until(lambda: apps.read_namespaced_deployment("auth-service", "auth").status.observed_generation == 3)
    assert zero, apps.read_namespaced_deployment("auth-service", "auth")
    status = apps.read_namespaced_deployment("auth-service", "auth").status
    assert status.replicas is None
    assert (status.ready_replicas, status.available_replicas, status.updated_replicas) == (None, None, None)
    assert [(c.type, c.status) for c in status.conditions] == [("Available", "True")]


def test_rollout_standin_restarts_on_a_newer_spec_and_ignores_metadata(tmp_path: Path) -> None:
    delay = 1.5  # long enough that the timing below holds on a busy machine
    with run_standin(tmp_path, "--ready-after", str(delay)) as running:
        apps = k8s.AppsV1Api(running.api())
        deployment = by_kind(render_manifest())["Deployment"]
        apps.create_namespaced_deployment("auth", deployment)
        assert wait_until(lambda: rolled_out(apps), 10), apps.read_namespaced_deployment("auth-service", "auth")

        # PUT a new replica count, then (before the delay) change the template: only the last spec rolls out.
        current = apps.read_namespaced_deployment("auth-service", "auth")
        current.spec.replicas = 4
        apps.replace_namespaced_deployment("auth-service", "auth", current)
        time.sleep(delay * 2 / 3)
        second = apps.patch_namespaced_deployment(
            "auth-service",
            "auth",
            {"spec": {"template": {"metadata": {"annotations": {"lab.immersiverse.dr/restarted-at": "drill"}}}}},
        )
        assert second.metadata.generation == 3
        time.sleep(delay * 2 / 3)  # past the first write's delay, short of the second's
        pending = apps.read_namespaced_deployment("auth-service", "auth")
        assert (pending.status.observed_generation, pending.status.ready_replicas) == (1, 3), pending.status
        assert pending.metadata.resource_version == second.metadata.resource_version
        done = wait_until(lambda: rolled_out(apps), 10)
        assert done is not None, apps.read_namespaced_deployment("auth-service", "auth")
        assert (done.status.observed_generation, done.status.ready_replicas) == (3, 4)
        assert int(done.metadata.resource_version) == int(second.metadata.resource_version) + 1  # one status write

        # A metadata-only change is no rollout: no new status write.
        labelled = apps.patch_namespaced_deployment("auth-service", "auth", {"metadata": {"labels": {"drill": "1"}}})
        time.sleep(delay + 0.5)
        assert (
            apps.read_namespaced_deployment("auth-service", "auth").metadata.resource_version
            == labelled.metadata.resource_version
        )


def test_rollout_standin_never_ready_annotation(rollout_standin: StandIn) -> None:
    apps = k8s.AppsV1Api(rollout_standin.api())
    with urllib.request.urlopen(f"{rollout_standin.url}/standin", timeout=10) as response:
        assert json.load(response)["rolloutStandIn"] == {
            "readyAfterSeconds": READY_AFTER,
            "neverReadyAnnotation": NEVER_READY,
        }
    never = by_kind(render_manifest())["Deployment"]
    never["metadata"].setdefault("annotations", {})[NEVER_READY] = "true"
    control = by_kind(render_manifest())["Deployment"]
    control["metadata"]["name"] = "control"
    started = time.monotonic()
    apps.create_namespaced_deployment("auth", never)
    apps.create_namespaced_deployment("auth", control)
    apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 2}})
    # The control Deployment does get ready, so the rollout stand-in is on ...
    assert wait_until(lambda: rolled_out(apps, "control"), 10), apps.read_namespaced_deployment("control", "auth")
    # ... and the annotated one stays unready for at least 2 s past the delay.
    time.sleep(max(0.0, started + READY_AFTER + 2.0 - time.monotonic()))
    assert apps.read_namespaced_deployment("auth-service", "auth").status is None

    # Without the annotation, the next spec change rolls out.
    apps.patch_namespaced_deployment("auth-service", "auth", {"metadata": {"annotations": {NEVER_READY: None}}})
    apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 1}})
    ready = wait_until(lambda: rolled_out(apps), 10)
    assert ready is not None, apps.read_namespaced_deployment("auth-service", "auth")
    assert ready.status.ready_replicas == 1


def test_without_ready_after_no_status_is_ever_written(standin: StandIn) -> None:
    apps = k8s.AppsV1Api(standin.api())
    apps.create_namespaced_deployment("auth", by_kind(render_manifest())["Deployment"])
    apps.patch_namespaced_deployment_scale("auth-service", "auth", {"spec": {"replicas": 0}})
    apps.patch_namespaced_deployment("auth-service", "auth", {"spec": {"replicas": 3}})
    time.sleep(2.0)  # four times the rollout stand-in fixture's delay
    deployment = apps.read_namespaced_deployment("auth-service", "auth")
    assert deployment.status is None
    assert deployment.metadata.resource_version == "3"  # create + two spec writes, nothing else
    with urllib.request.urlopen(f"{standin.url}/standin", timeout=10) as response:
        assert "rolloutStandIn" not in json.load(response)
    assert "rollout stand-in" not in standin.log.read_text()


@pytest.mark.parametrize("value", ["-1", "600.5", "nan", "soon"])
def test_ready_after_is_range_checked(value: str) -> None:
    result = subprocess.run(
        [sys.executable, str(STANDIN), "--port", "0", "--region", "primary", "--ready-after", value],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "--ready-after" in result.stderr


def test_sigterm_with_pending_rollouts_exits_promptly(tmp_path: Path) -> None:
    with run_standin(tmp_path, "--ready-after", "60") as running:
        apps = k8s.AppsV1Api(running.api())
        deployment = by_kind(render_manifest())["Deployment"]
        for name in ("auth-service", "other"):
            deployment["metadata"]["name"] = name
            apps.create_namespaced_deployment("auth", deployment)
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=5) == 0, running.log.read_text()
        assert time.monotonic() - started < 1.5, "pending rollouts slowed the shutdown"
        assert not running.pidfile.exists()


def test_ansible_waits_for_the_rollout_standin(rollout_standin: StandIn, tmp_path: Path) -> None:
    target = {"kind": "Deployment", "name": "auth-service", "namespace": "auth"}
    wait = {"wait": True, "wait_timeout": 20, "wait_sleep": 1}
    tasks = [
        {**APPLY_MANIFEST, "kubernetes.core.k8s": {**APPLY_MANIFEST["kubernetes.core.k8s"], **wait}},
        {"name": "isolate", "kubernetes.core.k8s_scale": {**target, "replicas": 0, "wait": False}},
        {
            "name": "reopen, waiting for the rollout",
            "kubernetes.core.k8s_scale": {**target, "replicas": 3, **wait},
            "register": "reopen",
        },
        {
            "kubernetes.core.k8s": {
                "state": "patched",
                **target,
                "definition": {"metadata": {"annotations": {NEVER_READY: "true"}}},
            }
        },
        {
            "name": "a readiness wait that must time out",
            "kubernetes.core.k8s_scale": {**target, "replicas": 2, "wait": True, "wait_timeout": 3, "wait_sleep": 1},
            "register": "stuck",
            "ignore_errors": True,
        },
        {
            "ansible.builtin.assert": {
                "that": [
                    "reopen is changed",
                    "reopen.result.status.readyReplicas == 3",
                    "stuck is failed",
                    "'timed out' in stuck.msg",
                ]
            }
        },
    ]
    counters, output = run_playbook(tmp_path, rollout_standin, tasks)
    assert (counters["failed"], counters["ignored"]) == (0, 1), output
