"""The lab's Kubernetes API stand-in (lab/k8s_standin.py, kmock's KubernetesEmulator), driven by real clients.

Each test starts its own stand-in process on a free loopback port and stops it (SIGTERM) at teardown. The clients
are the official ``kubernetes`` Python client and ``ansible-playbook`` with ``kubernetes.core``: the same code
paths the collection uses against a real cluster. What the stand-in does NOT do (controllers, admission, pods,
readiness) is in docs/kubernetes-standin.md; the assertions on ``readyReplicas`` below pin that gap down.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
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
    port = _free_port()
    log = tmp_path / "standin.log"
    pidfile = tmp_path / "standin.pid"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(STANDIN), "--port", str(port), "--region", "secondary", "--pidfile", str(pidfile)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
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
    assert set(docs) == {"Namespace", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                         "HorizontalPodAutoscaler"}

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
    assert status_of(lambda: apps.patch_namespaced_deployment_scale(
        "auth-service", "auth", {"spec": {"replicas": -1}})) == 422


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
    events = [(event["type"], event["object"].metadata.name) for event in watch.Watch().stream(
        list_and_tell, "auth", label_selector="drill=1", timeout_seconds=2)]
    thread.join(5)
    assert opened.is_set(), "the watch request was never answered"
    assert events == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]
    assert 1.5 < time.monotonic() - started < 5  # the server ended the stream at timeoutSeconds


def test_standin_refuses_a_non_loopback_bind(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(STANDIN), "--port", "0", "--region", "primary", "--host", "0.0.0.0"],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "only listens on loopback" in result.stderr


def run_playbook(tmp_path: Path, standin: StandIn, tasks: list[dict[str, Any]]) -> tuple[dict[str, int], str]:
    """Run a one-play playbook against the stand-in; returns the localhost recap counters and the output."""
    if not ANSIBLE_PLAYBOOK.exists():
        pytest.skip(f"ansible-playbook not found next to {sys.executable}")
    play = [{
        "name": "auth-service on the Kubernetes stand-in",
        "hosts": "localhost",
        "connection": "local",
        "gather_facts": False,
        "vars": {"ansible_python_interpreter": "{{ ansible_playbook_python }}", **REGION_VARS},
        "module_defaults": {"group/kubernetes.core.k8s": {
            "host": standin.url, "api_key": "dummy-token", "validate_certs": False}},
        "tasks": tasks,
    }]
    playbook = tmp_path / "play.yml"
    playbook.write_text(yaml.safe_dump(play, sort_keys=False))
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\nstdout_callback = ansible.builtin.default\nretry_files_enabled = false\n"
                      "localhost_warning = false\n[inventory]\ninventory_unparsed_warning = false\n")
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
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
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
        {"name": "check mode: a scale to 0 is only predicted",
         "kubernetes.core.k8s": {"state": "present", "definition": {
             "apiVersion": "apps/v1", "kind": "Deployment",
             "metadata": {"name": "auth-service", "namespace": "auth"}, "spec": {"replicas": 0}}},
         "check_mode": True},
        # wait: false -- nothing here produces ready replicas, so a wait could only time out.
        {"name": "isolate", "kubernetes.core.k8s_scale": {**target, "replicas": 0, "wait": False},
         "register": "isolate"},
        {"kubernetes.core.k8s_info": target, "register": "after"},
        {"ansible.builtin.assert": {"that": [
            "isolate is changed",
            "after.resources[0].spec.replicas == 0",
            "after.resources[0].status.readyReplicas is not defined",
        ]}},
        {"name": "isolate again", "kubernetes.core.k8s_scale": {**target, "replicas": 0, "wait": False},
         "register": "again"},
        {"ansible.builtin.assert": {"that": ["again is not changed"]}},
    ]
    counters, output = run_playbook(tmp_path, standin, tasks)
    assert counters["failed"] == 0, output
    # apply, the check-mode prediction, isolate; "isolate" being a change proves check mode stored nothing.
    assert counters["changed"] == 3, json.dumps(counters) + output
    log = standin.log.read_text()
    assert "ERROR" not in log and "Traceback" not in log, log
