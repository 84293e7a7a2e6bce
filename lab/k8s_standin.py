#!/usr/bin/env python3
"""Kubernetes API stand-in for the immersiverse.dr lab (one process per region).

No Kubernetes API server can run on the lab machine, so each region gets this
stand-in instead: PyPI ``kmock`` 0.8's ``KubernetesEmulator`` served over HTTP on
a loopback port, plus a thin layer of API semantics that kmock 0.8 lacks.  It is
a STAND-IN, NOT A CLUSTER: no admission, no controllers, no scheduler, no pods,
no defaulting, no schema validation.  By default nothing ever produces
``status.readyReplicas``.  See docs/kubernetes-standin.md for exactly what works
and what does not.

The rollout stand-in (``--ready-after SECONDS``, off by default) is the one
exception, and it is NOT a controller either: no ReplicaSet or pod exists.  When
a Deployment is created or its ``spec`` changes, it waits SECONDS and then writes
the ``status`` a deployment controller would report once a rollout finished
(``observedGeneration`` = ``generation``, all replica counts = ``spec.replicas``,
``Available`` True), as an ordinary MODIFIED write.  A Deployment annotated
``lab.immersiverse.dr/never-ready: "true"`` never gets that status.

Who does what:

* kmock serves API discovery (``/api``, ``/apis``, ``/apis/<group>``), error
  rendering and the aiohttp request plumbing, and stores the objects
  (``KubernetesEmulator.objects``) and watch events (``kmock.Bus``).
* This runner routes every resource URL itself, because kmock 0.8 cannot parse
  ``/api/v1/namespaces[/NAME]`` (it answers 500), has no PUT, ignores
  ``dryRun`` and selectors, sets no server metadata, and answers the ``scale``
  subresource with the whole Deployment.  The layer adds: server metadata
  (namespace, uid, creationTimestamp, resourceVersion, generation), merge /
  strategic-merge / JSON / apply patches, replace (PUT), ``dryRun=All``,
  optimistic concurrency on ``metadata.resourceVersion``, label and field
  selectors, watch with ``timeoutSeconds``, the ``scale`` and ``status``
  subresources, and deletion with finalizers.

Usage::

    python lab/k8s_standin.py --port 18443 --region primary [--pidfile F] [--ready-after SECONDS]

It binds 127.0.0.1 (or another loopback address given with ``--host``; anything
else is refused), logs one ``ready`` line to stderr when it accepts requests, and
exits cleanly within about a second on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import copy
import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, NamedTuple

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

LOG = logging.getLogger("k8s_standin")

SUPPORTED_KMOCK_SERIES = (0, 8)
SERVER_GIT_VERSION = "v1.26.0+kmock-standin"

_VERBS = ("create", "delete", "get", "list", "patch", "update", "watch")


class ResourceSpec(NamedTuple):
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    shortnames: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


# Exactly the resources the authentication service's app needs; anything else is 404.
RESOURCES: tuple[ResourceSpec, ...] = (
    ResourceSpec("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    ResourceSpec("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    ResourceSpec("", "v1", "secrets", "Secret", True),
    ResourceSpec("", "v1", "services", "Service", True, ("svc",), ("status",)),
    ResourceSpec("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("scale", "status")),
    ResourceSpec("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), ("status",)),
    ResourceSpec(
        "autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", True, ("hpa",), ("status",)
    ),
    # The deny-all policy that isolates a failed region's app. No status subresource, as in Kubernetes 1.26
    # without the alpha NetworkPolicyStatus gate. Nothing enforces it: the stand-in has no network.
    ResourceSpec("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", True, ("netpol",)),
)
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_DEPLOYMENTS = _BY_PATH[("apps", "v1", "deployments")]

# Server-managed metadata: never taken from a client's body.
_SERVER_META = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "selfLink",
    "managedFields",
)

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_REGION = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Like the API server's registries: deleting these answers with the deleted object, the others with a Status.
_RETURNS_DELETED_OBJECT = {"services"}
_END_OF_WATCH: dict[str, Any] = {"type": "_END_OF_WATCH"}  # never sent: ends watch streams at shutdown

# Rollout stand-in (--ready-after): a Deployment carrying this annotation with value "true" never reports ready.
NEVER_READY_ANNOTATION = "lab.immersiverse.dr/never-ready"
READY_AFTER_MAX = 600.0


# --------------------------------------------------------------------------------------------
# Errors in the shape of a Kubernetes Status
# --------------------------------------------------------------------------------------------


def api_error(code: int, reason: str, message: str, **details: Any) -> kmock.KubernetesError:
    return kmock.KubernetesError(
        status=code, reason=reason, message=message, details={k: v for k, v in details.items() if v is not None}
    )


def status_body(
    code: int, reason: str, message: str, details: Mapping[str, Any] | None = None, ok: bool = False
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Success" if ok else "Failure",
        "code": code,
    }
    if reason:
        body["reason"] = reason
    if message:
        body["message"] = message
    if details:
        body["details"] = dict(details)
    return body


def _not_found(spec: ResourceSpec, name: str) -> kmock.KubernetesError:
    qualified = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
    return api_error(404, "NotFound", f'{qualified} "{name}" not found', name=name, group=spec.group, kind=spec.plural)


def _bad_request(message: str) -> kmock.KubernetesError:
    return api_error(400, "BadRequest", message)


def _invalid(spec: ResourceSpec, name: str | None, message: str) -> kmock.KubernetesError:
    return api_error(
        422, "Invalid", f'{spec.kind} "{name}" is invalid: {message}', name=name, group=spec.group, kind=spec.kind
    )


# --------------------------------------------------------------------------------------------
# URL routing (kmock 0.8's parser cannot handle the namespaces resource itself)
# --------------------------------------------------------------------------------------------


class Target(NamedTuple):
    group: str
    version: str
    plural: str
    namespace: str | None
    name: str | None
    subresource: str | None


def parse_resource_path(path: str) -> Target | None:
    """Map a Kubernetes resource URL to its parts; None for discovery and other non-resource paths."""
    parts = [p for p in path.split("/") if p]
    if len(parts) >= 2 and parts[0] == "api":
        group, version, rest = "", parts[1], parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    if not rest:
        return None  # /api/v1, /apis/apps/v1: discovery
    namespace: str | None = None
    # /namespaces/NS/PLURAL[...] is namespaced unless PLURAL is not a namespaced resource, in which
    # case it is the namespaces resource itself: /api/v1/namespaces/NAME/status.
    if rest[0] == "namespaces" and len(rest) >= 3:
        spec = _BY_PATH.get((group, version, rest[2]))
        if spec is not None and spec.namespaced:
            namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) >= 2 else None
    subresource = "/".join(rest[2:]) or None
    return Target(group, version, plural, namespace, name, subresource)


# --------------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# patchMergeKey of the list fields the app's objects use (from the Kubernetes API types).
# Matched by field name, not by full path: "ports" means containerPort in a container, port in a Service.
# A NetworkPolicy needs none: its lists (ingress, egress, policyTypes, and the ports/from/to inside a rule)
# have no patchMergeKey in the API types, so a strategic merge replaces them whole, which is the default below.
# (The NetworkPolicy rule's "ports" is never reached by the "ports" rule: ingress/egress are replaced whole.)
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
_MERGED_PRIMITIVE_LISTS = {"finalizers"}


def _list_merge_key(field: str, items: list[Any]) -> str | None:
    if field == "ports":
        return "containerPort" if any(isinstance(i, dict) and "containerPort" in i for i in items) else "port"
    return _MERGE_KEYS.get(field)


def strategic_merge_patch(target: Any, patch: Any, field: str = "") -> Any:
    """A strategic merge patch for the app's field types; refuses the $-directives it does not implement."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$setElementOrder/"):
            continue  # ordering hint only
        if key.startswith("$"):
            raise _bad_request(f"strategic merge patch directive {key!r} is not supported by the stand-in")
        old = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(old, value, key)
        elif isinstance(value, list) and isinstance(old, list) and key in _MERGED_PRIMITIVE_LISTS:
            result[key] = list(old) + [v for v in value if v not in old]
        elif isinstance(value, list) and isinstance(old, list):
            merge_key = _list_merge_key(key, value)
            keyed = merge_key is not None and all(isinstance(i, dict) and merge_key in i for i in [*old, *value])
            if keyed:
                patched = {i[merge_key]: i for i in value}
                merged = [
                    strategic_merge_patch(i, patched.pop(i[merge_key]), key) if i[merge_key] in patched else i
                    for i in old
                ]
                result[key] = merged + [strategic_merge_patch({}, i, key) for i in patched.values()]
            else:
                result[key] = copy.deepcopy(value)
        else:
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, dict) and any(str(k).startswith("$") for k in item):
                        raise _bad_request("strategic merge patch directives are not supported by the stand-in")
            result[key] = copy.deepcopy(value)
    return result


def json_patch(target: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise _bad_request("a JSON patch must be a list of operations")
    try:
        return jsonpatch.apply_patch(target, operations, in_place=False)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, KeyError, TypeError) as exc:
        raise api_error(422, "Invalid", f"the JSON patch could not be applied: {exc}") from None


_PATCH_TYPES = {
    "application/json-patch+json": "json",
    "application/merge-patch+json": "merge",
    "application/strategic-merge-patch+json": "strategic",
    "application/apply-patch+yaml": "apply",
}


# --------------------------------------------------------------------------------------------
# Selectors
# --------------------------------------------------------------------------------------------

_LABEL_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_LABEL_VALUE = r"[-A-Za-z0-9_.]*"
_LABEL_TERM = re.compile(
    rf"^\s*(?:(?P<absent>!)\s*(?P<akey>{_LABEL_KEY})"
    rf"|(?P<key>{_LABEL_KEY})\s*(?:(?P<op>==|=|!=)\s*(?P<value>{_LABEL_VALUE})"
    rf"|\s+(?P<setop>in|notin)\s*\((?P<values>[^()]*)\))?)\s*$"
)


def label_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Equality-, set- and existence-based label selectors, as the API server accepts them."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in re.split(r",(?![^()]*\))", text or ""):
        if not term.strip():
            continue
        m = _LABEL_TERM.match(term)
        if m is None:
            raise _bad_request(f"unable to parse requirement: {term.strip()!r}")
        if m["absent"]:
            checks.append(lambda labels, k=m["akey"]: k not in labels)
        elif m["op"] in ("=", "=="):
            checks.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) == v)
        elif m["op"] == "!=":
            checks.append(lambda labels, k=m["key"], v=m["value"]: labels.get(k) != v)
        elif m["setop"]:
            values = {v.strip() for v in m["values"].split(",") if v.strip()}
            if m["setop"] == "in":
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=m["key"], vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=m["key"]: k in labels)

    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(check(labels) for check in checks)

    return matches


def field_selector(text: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """Only metadata.name and metadata.namespace, with =, == and !=."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in (text or "").split(","):
        if not term.strip():
            continue
        m = re.match(r"^\s*(metadata\.name|metadata\.namespace)\s*(==|=|!=)\s*([^,]*?)\s*$", term)
        if m is None:
            raise _bad_request(f"field label not supported by the stand-in: {term.strip()!r}")
        field, op, value = m.group(1).split(".")[1], m.group(2), m.group(3)
        if op == "!=":
            checks.append(lambda meta, f=field, v=value: meta.get(f) != v)
        else:
            checks.append(lambda meta, f=field, v=value: meta.get(f) == v)

    def matches(obj: Mapping[str, Any]) -> bool:
        meta = obj.get("metadata") or {}
        return all(check(meta) for check in checks)

    return matches


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _strip_volatile(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object without resourceVersion/generation: what decides whether a write changed anything."""
    out = copy.deepcopy(dict(obj))
    meta = out.get("metadata") or {}
    meta.pop("resourceVersion", None)
    meta.pop("generation", None)
    return out


def _scale_selector(deployment: Mapping[str, Any]) -> str:
    labels = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _never_ready(deployment: Mapping[str, Any]) -> bool:
    annotations = (deployment.get("metadata") or {}).get("annotations") or {}
    return annotations.get(NEVER_READY_ANNOTATION) == "true"


def rolled_out_status(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The status a deployment controller reports once a rollout of this Deployment's spec has finished.

    Written by the rollout stand-in only; no ReplicaSet or pod exists behind these numbers.  At 0 replicas the
    replica, ready, available and updated counts are all omitted, as a real API server does (``omitempty``), so
    ``kubernetes.core``'s wait on a scale to 0 passes as it does on a cluster.
    """
    replicas = (deployment.get("spec") or {}).get("replicas")
    if replicas is None:
        replicas = 1  # the API server's default
    status: dict[str, Any] = {"observedGeneration": deployment["metadata"]["generation"]}
    if replicas:
        status.update(replicas=replicas, updatedReplicas=replicas, readyReplicas=replicas, availableReplicas=replicas)
    previous = next(
        (
            c
            for c in (deployment.get("status") or {}).get("conditions") or []
            if isinstance(c, dict) and c.get("type") == "Available"
        ),
        None,
    )
    if (
        previous is not None
        and previous.get("status") == "True"
        and previous.get("reason") == "MinimumReplicasAvailable"
    ):
        condition = copy.deepcopy(previous)  # unchanged condition: a controller keeps its timestamps
    else:
        now = _now()
        condition = {
            "type": "Available",
            "status": "True",
            "reason": "MinimumReplicasAvailable",
            "message": "Deployment has minimum availability (lab rollout stand-in: no pods exist).",
            "lastUpdateTime": now,
            "lastTransitionTime": now,
        }
    status["conditions"] = [condition]
    return status


@attrs.define(kw_only=True)
class StandIn(kmock.KubernetesEmulator):
    """kmock's KubernetesEmulator with the resource URLs routed through a thin API-semantics layer."""

    region: str = "lab"
    # Rollout stand-in: seconds from a Deployment's create or spec change to its "rolled out" status; None: off.
    ready_after: float | None = None
    _rv: int = attrs.field(default=0, init=False)
    _rollouts: dict[tuple[str | None, str], asyncio.Task[None]] = attrs.field(factory=dict, init=False)
    _rollouts_closed: bool = attrs.field(default=False, init=False)
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _watch_buses: dict[tuple[str, str, str], kmock.Bus[Any]] = attrs.field(
        factory=lambda: collections.defaultdict(kmock.Bus), init=False
    )

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in RESOURCES:
            self.resources[kmock.resource(spec.group, spec.version, spec.plural)] = kmock.ResourceInfo(
                kind=spec.kind,
                singular=spec.singular,
                namespaced=spec.namespaced,
                verbs=set(_VERBS),
                shortnames=set(spec.shortnames),
                subresources=set(spec.subresources),
            )

    # ---- entry point -------------------------------------------------------------------------

    async def __call__(self, raw: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw.path.rstrip("/") == "/standin":
            about: dict[str, Any] = {
                "standin": "kmock.KubernetesEmulator",
                "kmockVersion": kmock.__version__,
                "region": self.region,
                "resources": [f"{s.api_version}/{s.plural}" for s in RESOURCES],
            }
            if self.ready_after is not None:  # absent by default, so the default answer is unchanged
                about["rolloutStandIn"] = {
                    "readyAfterSeconds": self.ready_after,
                    "neverReadyAnnotation": NEVER_READY_ANNOTATION,
                }
            return aiohttp.web.json_response(about)
        target = parse_resource_path(raw.path)
        if target is None:
            # Discovery (/, /version, /api, /apis, /apis/G, /apis/G/V): served by kmock itself.
            try:
                return await super().__call__(raw)
            finally:
                self._forget_requests()
        try:
            payload = await raw.read()
            return await self._serve_resource(raw, target, payload)
        except kmock.KubernetesError as exc:
            return await self._render_error(exc)
        except Exception as exc:  # a bug in the stand-in: say so, like an API server's 500
            LOG.exception("internal error on %s %s", raw.method, raw.path_qs)
            return await self._render_error(exc)

    def _forget_requests(self) -> None:
        # kmock keeps every request for test assertions; a long-running lab process must not.
        self._requests.clear()
        for payload in self._payloads:
            payload._requests.clear()
        for errors in self._errors:
            errors.clear()

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, kmock.KubernetesNotFoundError):  # kmock's own 404s carry kmock usage hints
            exc = api_error(404, "NotFound", "the server could not find the requested resource")
        if isinstance(exc, kmock.KubernetesError):
            body = status_body(exc.status, exc.reason or "", exc.message or "", exc.details)
            return aiohttp.web.json_response(body, status=exc.status)
        return aiohttp.web.json_response(
            status_body(500, "InternalError", f"stand-in internal error: {exc!r}"), status=500
        )

    # ---- discovery fixes on top of kmock ------------------------------------------------------

    async def _serve_server_version(self, request: Any) -> dict[str, Any]:
        return {
            "major": "1",
            "minor": "26",
            "gitVersion": SERVER_GIT_VERSION,
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "kmock",
            "platform": f"standin/{self.region}",
        }

    async def _serve_version(self, request: Any) -> dict[str, Any]:
        group, version = request.resource.group, request.resource.version
        specs = [s for s in RESOURCES if (s.group, s.version) == (group, version)]
        if not specs:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        resources: list[dict[str, Any]] = []
        for s in specs:
            resources.append(
                {
                    "name": s.plural,
                    "singularName": s.singular,
                    "namespaced": s.namespaced,
                    "kind": s.kind,
                    "verbs": list(_VERBS),
                    "shortNames": list(s.shortnames),
                }
            )
            for sub in s.subresources:
                entry = {
                    "name": f"{s.plural}/{sub}",
                    "singularName": "",
                    "namespaced": s.namespaced,
                    "kind": s.kind,
                    "verbs": ["get", "patch", "update"],
                }
                if sub == "scale":
                    entry.update(kind="Scale", group="autoscaling", version="v1")
                resources.append(entry)
        return {
            "apiVersion": "v1",
            "kind": "APIResourceList",
            "groupVersion": f"{group}/{version}" if group else version,
            "resources": resources,
        }

    # ---- resource routing ---------------------------------------------------------------------

    async def _serve_resource(
        self,
        raw: aiohttp.web.BaseRequest,
        t: Target,
        payload: bytes,
    ) -> aiohttp.web.StreamResponse:
        spec = _BY_PATH.get((t.group, t.version, t.plural))
        if spec is None:
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        if spec.namespaced and t.namespace is None and (t.name is not None or raw.method != "GET"):
            raise api_error(404, "NotFound", f"{spec.plural} are namespaced: use /namespaces/NAMESPACE/{spec.plural}")
        if t.subresource is not None and (t.name is None or t.subresource not in spec.subresources):
            raise api_error(404, "NotFound", "the server could not find the requested resource")
        query = raw.query
        method = raw.method
        if t.name is None:
            if method == "GET":
                if query.get("watch") in ("true", "1"):
                    return await self._watch(raw, spec, t.namespace, None)
                return aiohttp.web.json_response(await self._list(spec, t.namespace, query))
            if method == "POST":
                obj, code = await self._create(spec, t.namespace, self._body(raw, payload), self._dry_run(query))
                return aiohttp.web.json_response(obj, status=code)
            raise api_error(
                405,
                "MethodNotAllowed",
                f"{method} on a collection is not supported by the stand-in (no deletecollection)",
            )
        if method == "GET":
            if query.get("watch") in ("true", "1"):
                return await self._watch(raw, spec, t.namespace, t.name)
            obj = self._get(spec, t.namespace, t.name)
            if obj is None:
                raise _not_found(spec, t.name)
            return aiohttp.web.json_response(self._scale_view(spec, obj) if t.subresource == "scale" else obj)
        if method in ("PATCH", "PUT"):
            obj, code = await self._update(raw, payload, spec, t)
            return aiohttp.web.json_response(obj, status=code)
        if method == "DELETE":
            if t.subresource is not None:
                raise api_error(405, "MethodNotAllowed", f"DELETE is not allowed on {t.subresource}")
            body = self._body(raw, payload, required=False) or {}
            return aiohttp.web.json_response(await self._delete(spec, t.namespace, t.name, body, query))
        raise api_error(405, "MethodNotAllowed", f"{method} is not supported")

    @staticmethod
    def _body(raw: aiohttp.web.BaseRequest, payload: bytes, *, required: bool = True) -> Any:
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad_request("the request body is not UTF-8") from None
        if not text.strip():
            if required:
                raise _bad_request("the request body is empty")
            return None
        try:
            return json.loads(text)
        except ValueError:
            if raw.content_type == "application/apply-patch+yaml":
                try:
                    return yaml.safe_load(text)
                except yaml.YAMLError as exc:
                    raise _bad_request(f"the YAML body could not be parsed: {exc}") from None
            raise _bad_request("the request body is not valid JSON") from None

    @staticmethod
    def _dry_run(query: Any, body: Any = None) -> bool:
        values = [v for v in query.getall("dryRun", []) if v]
        if isinstance(body, dict) and isinstance(body.get("dryRun"), list):
            values += body["dryRun"]
        for value in values:
            if value != "All":
                raise _bad_request(f"invalid dry run value {value!r}: only 'All' is supported")
        return bool(values)

    # ---- store --------------------------------------------------------------------------------

    @staticmethod
    def _ref(spec: ResourceSpec) -> kmock.resource:
        return kmock.resource(spec.group, spec.version, spec.plural)

    def _get(self, spec: ResourceSpec, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (self._ref(spec), namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _all(self, spec: ResourceSpec, namespace: str | None) -> list[dict[str, Any]]:
        ref = self._ref(spec)
        found = [
            (ns or "", name, obj)
            for (res, ns, name), obj in self.objects.items()
            if res == ref and not obj.deleted and (namespace is None or ns == namespace)
        ]
        return [copy.deepcopy(obj.raw) for _, _, obj in sorted(found, key=lambda x: (x[0], x[1]))]

    async def _commit(self, spec: ResourceSpec, event: str, obj: dict[str, Any]) -> None:
        """Store (or drop, for DELETED) one object and tell the watchers. Caller holds _write_lock."""
        meta = obj["metadata"]
        key = (self._ref(spec), meta.get("namespace") if spec.namespaced else None, meta["name"])
        if spec is _DEPLOYMENTS and self.ready_after is not None:
            self._track_rollout(event, self._get(spec, key[1], key[2]), obj)
        if event == "DELETED":
            del self.objects[key]
        else:
            self.objects[key] = obj  # a fresh single-version kmock Object: no unbounded history
        await self._watch_buses[(spec.group, spec.version, spec.plural)].put(
            {"type": event, "object": copy.deepcopy(obj)}
        )

    def _next_rv(self) -> str:
        return str(self._rv + 1)

    # ---- rollout stand-in (--ready-after): NOT a controller, no pods exist ------------------------

    def _track_rollout(self, event: str, before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> None:
        """(Re)schedule the "rolled out" status write when a Deployment is created or its spec changes.

        Called by _commit under _write_lock, so a pending write is never half-way through its own commit here.
        """
        meta = after["metadata"]
        key = (meta.get("namespace"), meta["name"])
        if event == "DELETED":
            self._cancel_rollout(key)
        elif event == "ADDED" or (before or {}).get("spec") != after.get("spec"):
            self._cancel_rollout(key)  # a newer spec supersedes the pending rollout
            if not _never_ready(after) and not self._rollouts_closed:
                self._rollouts[key] = asyncio.get_running_loop().create_task(
                    self._finish_rollout(key, meta["generation"]), name=f"rollout-standin {key[0]}/{key[1]}"
                )

    def _cancel_rollout(self, key: tuple[str | None, str]) -> None:
        task = self._rollouts.pop(key, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _finish_rollout(self, key: tuple[str | None, str], generation: int) -> None:
        assert self.ready_after is not None
        try:
            await asyncio.sleep(self.ready_after)
            async with self._write_lock:
                current = self._get(_DEPLOYMENTS, *key)
                if current is None or current["metadata"].get("generation") != generation or _never_ready(current):
                    return  # gone, superseded (its own rollout is pending), or meant to never get ready
                new = copy.deepcopy(current)
                new["status"] = rolled_out_status(current)
                result, event = self._settle(_DEPLOYMENTS, current, new)
                if event is not None:
                    self._rv += 1
                    await self._commit(_DEPLOYMENTS, event, result)
                    LOG.debug("rollout stand-in: %s/%s reports generation %s rolled out", key[0], key[1], generation)
        except Exception:  # a bug in the stand-in: say so now, not when the task is garbage-collected
            LOG.exception("rollout stand-in: the status write for %s/%s failed", key[0], key[1])
        finally:
            if self._rollouts.get(key) is asyncio.current_task():
                del self._rollouts[key]

    async def cancel_rollouts(self) -> None:
        """Drop every pending rollout-stand-in write and schedule no more (used at shutdown)."""
        self._rollouts_closed = True
        tasks = list(self._rollouts.values())
        self._rollouts.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- create -------------------------------------------------------------------------------

    def _check_identity(self, spec: ResourceSpec, body: Any, namespace: str | None) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise _bad_request(f"the body must be a {spec.kind} object")
        obj = copy.deepcopy(body)
        if (
            obj.setdefault("apiVersion", spec.api_version) != spec.api_version
            or obj.setdefault("kind", spec.kind) != spec.kind
        ):
            raise _bad_request(
                f"the API version in the data ({obj.get('apiVersion')}/{obj.get('kind')}) "
                f"does not match the expected API version ({spec.api_version}/{spec.kind})"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        if spec.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise _bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        return obj

    async def _create(
        self,
        spec: ResourceSpec,
        namespace: str | None,
        body: Any,
        dry_run: bool,
    ) -> tuple[dict[str, Any], int]:
        obj = self._check_identity(spec, body, namespace)
        meta = obj["metadata"]
        name = meta.get("name")
        if not name:
            raise _invalid(spec, name, "metadata.name: Required value (generateName is not supported by the stand-in)")
        pattern = _DNS1123_LABEL if spec.plural == "namespaces" else _DNS1123_SUBDOMAIN
        if not isinstance(name, str) or not pattern.match(name):
            raise _invalid(spec, name, "metadata.name: Invalid value: not a lowercase RFC 1123 name")
        if meta.get("resourceVersion"):
            raise _bad_request("resourceVersion should not be set on objects to be created")
        async with self._write_lock:
            if self._get(spec, namespace, name) is not None:
                qualified = f"{spec.plural}.{spec.group}" if spec.group else spec.plural
                raise api_error(
                    409,
                    "AlreadyExists",
                    f'{qualified} "{name}" already exists',
                    name=name,
                    group=spec.group,
                    kind=spec.plural,
                )
            for field in _SERVER_META:
                meta.pop(field, None)
            meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), resourceVersion=self._next_rv(), generation=1)
            self._normalise(spec, obj)
            if "status" in spec.subresources:
                obj.pop("status", None)  # status is written through the status subresource only
            if spec.plural == "namespaces":
                obj["status"] = {"phase": "Active"}
            if not dry_run:
                self._rv += 1
                await self._commit(spec, "ADDED", obj)
        return obj, 201

    @staticmethod
    def _normalise(spec: ResourceSpec, obj: dict[str, Any]) -> None:
        # The one registry-level transform the app depends on: Secret stringData is write-only.
        if spec.plural == "secrets" and isinstance(obj.get("stringData"), dict):
            data = obj.setdefault("data", {}) or {}
            for key, value in obj.pop("stringData").items():
                data[key] = base64.b64encode(str(value).encode("utf-8")).decode("ascii")
            obj["data"] = data

    # ---- update (PATCH / PUT, incl. subresources) ----------------------------------------------

    async def _update(
        self,
        raw: aiohttp.web.BaseRequest,
        payload: bytes,
        spec: ResourceSpec,
        t: Target,
    ) -> tuple[dict[str, Any], int]:
        assert t.name is not None
        body = self._body(raw, payload)
        dry_run = self._dry_run(raw.query)
        kind = None
        if raw.method == "PATCH":
            kind = _PATCH_TYPES.get(raw.content_type)
            if kind is None:
                raise api_error(
                    415,
                    "UnsupportedMediaType",
                    f"the body of the request was in an unknown format ({raw.content_type}); "
                    f"accepted: {', '.join(_PATCH_TYPES)}",
                )
        if kind == "apply" and t.subresource is None and self._get(spec, t.namespace, t.name) is None:
            # Server-side apply of a missing object creates it (a racing create gets 409 AlreadyExists).
            desired = strategic_merge_patch({}, body)
            desired.setdefault("metadata", {}).setdefault("name", t.name)
            return await self._create(spec, t.namespace, desired, dry_run)
        async with self._write_lock:
            current = self._get(spec, t.namespace, t.name)
            if current is None:
                raise _not_found(spec, t.name)

            base = self._scale_view(spec, current) if t.subresource == "scale" else current
            if kind is None:
                desired = body
            elif kind == "json":
                desired = json_patch(base, body)
            elif kind == "merge":
                desired = merge_patch(base, body)
            else:
                desired = strategic_merge_patch(base, body)
            if not isinstance(desired, dict):
                raise _bad_request("the result of the update is not an object")
            expected_rv = (desired.get("metadata") or {}).get("resourceVersion")
            if isinstance(body, dict) and kind is not None:
                expected_rv = (body.get("metadata") or {}).get("resourceVersion")
            if expected_rv and str(expected_rv) != current["metadata"]["resourceVersion"]:
                raise api_error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {spec.plural} "{t.name}": the object has been '
                    "modified; please apply your changes to the latest version and try again",
                    name=t.name,
                    group=spec.group,
                    kind=spec.plural,
                )

            if t.subresource == "scale":
                replicas = (desired.get("spec") or {}).get("replicas")
                if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                    raise _invalid(
                        spec, t.name, f"spec.replicas: Invalid value: {replicas!r}: must be a non-negative integer"
                    )
                new = copy.deepcopy(current)
                new.setdefault("spec", {})["replicas"] = replicas
            elif t.subresource == "status":
                new = copy.deepcopy(current)
                if desired.get("status") is None:
                    new.pop("status", None)
                else:
                    new["status"] = copy.deepcopy(desired["status"])
            else:
                if desired.get("metadata", {}).get("name", t.name) != t.name:
                    raise _bad_request("the name of the object does not match the name on the URL")
                new = self._check_identity(spec, desired, t.namespace)
                new["metadata"]["name"] = t.name
                for field in _SERVER_META:
                    new["metadata"].pop(field, None)
                    if field in current["metadata"]:
                        new["metadata"][field] = current["metadata"][field]
                self._normalise(spec, new)
                if "status" in spec.subresources:  # the main resource cannot change status
                    new.pop("status", None)
                    if "status" in current:
                        new["status"] = current["status"]

            result, event = self._settle(spec, current, new)
            if event is not None and not dry_run:
                self._rv += 1
                await self._commit(spec, event, result)
        return (self._scale_view(spec, result) if t.subresource == "scale" else result), 200

    def _settle(
        self,
        spec: ResourceSpec,
        current: dict[str, Any],
        new: dict[str, Any],
    ) -> tuple[dict[str, Any], str | None]:
        """Decide what an update did: nothing, a modification, or the end of a pending deletion."""
        if _strip_volatile(new) == _strip_volatile(current):
            return current, None  # a no-op write changes nothing, not even resourceVersion
        meta = new["metadata"]
        meta["resourceVersion"] = self._next_rv()
        outside = {k: v for k, v in new.items() if k not in ("metadata", "status")}
        before = {k: v for k, v in current.items() if k not in ("metadata", "status")}
        if outside != before:
            meta["generation"] = int(current["metadata"].get("generation") or 0) + 1
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return new, "DELETED"  # the last finalizer went away: the pending deletion completes
        return new, "MODIFIED"

    @staticmethod
    def _scale_view(spec: ResourceSpec, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp") if k in meta
            },
            "spec": {"replicas": (obj.get("spec") or {}).get("replicas", 1)},
            # Nothing runs pods here: status.replicas is whatever the status subresource was told (else 0).
            "status": {"replicas": (obj.get("status") or {}).get("replicas", 0), "selector": _scale_selector(obj)},
        }

    # ---- delete -------------------------------------------------------------------------------

    async def _delete(
        self, spec: ResourceSpec, namespace: str | None, name: str, body: Any, query: Any
    ) -> dict[str, Any]:
        dry_run = self._dry_run(query, body)
        preconditions = (body.get("preconditions") if isinstance(body, dict) else None) or {}
        async with self._write_lock:
            current = self._get(spec, namespace, name)
            if current is None:
                raise _not_found(spec, name)
            meta = current["metadata"]
            for field in ("uid", "resourceVersion"):
                if preconditions.get(field) and preconditions[field] != meta.get(field):
                    raise api_error(
                        409,
                        "Conflict",
                        f"Precondition failed: {field} in precondition: {preconditions[field]}, "
                        f"{field} in object meta: {meta.get(field)}",
                    )
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):  # deletion stays pending until the finalizers go
                    meta.update(deletionTimestamp=_now(), resourceVersion=self._next_rv())
                    if not dry_run:
                        self._rv += 1
                        await self._commit(spec, "MODIFIED", current)
                return current
            if not dry_run:
                self._rv += 1
                meta["resourceVersion"] = str(self._rv)
                await self._commit(spec, "DELETED", current)
        if spec.plural in _RETURNS_DELETED_OBJECT:
            return current
        return status_body(
            200, "", "", {"name": name, "group": spec.group, "kind": spec.plural, "uid": meta.get("uid")}, ok=True
        )

    # ---- list / watch -------------------------------------------------------------------------

    def _selector(self, query: Mapping[str, str], name: str | None) -> Callable[[Mapping[str, Any]], bool]:
        by_labels = label_selector(query.get("labelSelector"))
        by_fields = field_selector(query.get("fieldSelector"))
        return lambda obj: by_labels(obj) and by_fields(obj) and (name is None or obj["metadata"].get("name") == name)

    async def _list(self, spec: ResourceSpec, namespace: str | None, query: Mapping[str, str]) -> dict[str, Any]:
        matches = self._selector(query, None)
        return {
            "apiVersion": spec.api_version,
            "kind": f"{spec.kind}List",
            "metadata": {"resourceVersion": str(self._rv)},
            "items": [obj for obj in self._all(spec, namespace) if matches(obj)],
        }

    async def _watch(
        self, raw: aiohttp.web.BaseRequest, spec: ResourceSpec, namespace: str | None, name: str | None
    ) -> aiohttp.web.StreamResponse:
        matches = self._selector(raw.query, name)
        try:
            timeout = float(raw.query["timeoutSeconds"]) if raw.query.get("timeoutSeconds") else None
        except ValueError:
            raise _bad_request("timeoutSeconds must be a number") from None
        since = raw.query.get("resourceVersion") or ""
        bus = self._watch_buses[(spec.group, spec.version, spec.plural)]
        async with self._write_lock:  # mark + snapshot atomically: no event is lost or doubled
            mark = await bus.mark()
            initial = [] if since not in ("", "0") else [o for o in self._all(spec, namespace) if matches(o)]
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(raw)
            for obj in initial:
                await response.write(json.dumps({"type": "ADDED", "object": obj}).encode() + b"\n")
            async for event in self._events(bus, mark, timeout):
                obj = event["object"]
                in_scope = namespace is None or obj["metadata"].get("namespace") == namespace
                if in_scope and matches(obj):
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            LOG.debug("watch on %s: the client went away", raw.path)
        finally:
            await bus.unmark(mark)
        return response

    async def end_watches(self) -> None:
        """Finish every open watch stream normally (used at shutdown, so that exit is immediate)."""
        for bus in list(self._watch_buses.values()):
            await bus.put(_END_OF_WATCH)

    @staticmethod
    async def _events(
        bus: kmock.Bus[Any],
        mark: kmock.BusMark[Any],
        timeout: float | None,
    ) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        stream = bus.stream(since=mark)
        try:
            while True:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(anext(stream), remaining)
                except (TimeoutError, StopAsyncIteration):
                    return
                if event is _END_OF_WATCH:
                    return
                yield event
        finally:
            await stream.aclose()


# --------------------------------------------------------------------------------------------
# Process: arguments, bind, ready line, pidfile, signals
# --------------------------------------------------------------------------------------------


def _loopback_host(value: str) -> str:
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an IP address (give a loopback IP, e.g. 127.0.0.1)"
        ) from None
    if not address.is_loopback:
        raise argparse.ArgumentTypeError(f"refusing to bind {value}: the stand-in only listens on loopback")
    return str(address)


def _region(value: str) -> str:
    if not _REGION.match(value):
        raise argparse.ArgumentTypeError(f"invalid region name {value!r} (lowercase letters, digits, '-')")
    return value


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range: {port}")
    return port


def _ready_after(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 <= seconds <= READY_AFTER_MAX:  # also refuses nan; inf is out of range
        raise argparse.ArgumentTypeError(
            f"--ready-after must be between 0 and {READY_AFTER_MAX:g} seconds, not {value}"
        )
    return seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="k8s_standin", description="Serve the lab's Kubernetes API stand-in (kmock) for one region."
    )
    parser.add_argument("--port", type=_port, required=True, help="TCP port (0: pick a free one)")
    parser.add_argument("--region", type=_region, required=True, help="region name, e.g. primary")
    parser.add_argument("--host", type=_loopback_host, default="127.0.0.1", help="loopback address to bind")
    parser.add_argument("--pidfile", help="write the PID here once ready; removed at exit")
    parser.add_argument("--startup-timeout", type=float, default=10.0, help="seconds allowed to start")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--ready-after",
        type=_ready_after,
        default=None,
        metavar="SECONDS",
        help="rollout stand-in (off by default; not a controller, no pods exist): SECONDS after a Deployment is "
        "created or its spec changes, write the status a finished rollout reports (observedGeneration, "
        f'ready/available/updated replicas, Available). Annotation {NEVER_READY_ANNOTATION}: "true" '
        f"opts a Deployment out. 0 to {READY_AFTER_MAX:g}.",
    )
    return parser.parse_args(argv)


def _check_pidfile(path: str) -> None:
    """Refuse to start when the pidfile names another live process; a stale one is overwritten later."""
    with contextlib.suppress(FileNotFoundError, ValueError):
        with open(path, encoding="utf-8") as f:
            other = int(f.read().strip() or "0")
        if other > 0 and other != os.getpid():
            try:
                os.kill(other, 0)
            except ProcessLookupError:
                pass  # stale
            except PermissionError:
                raise RuntimeError(f"pidfile {path} names a live process {other}") from None
            else:
                raise RuntimeError(f"pidfile {path} names a live process {other}")


def _write_pidfile(path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def _release_pidfile(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError), open(path, encoding="utf-8") as f:
        if int(f.read().strip() or "0") == os.getpid():
            os.unlink(path)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


async def serve(args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    standin = StandIn(region=args.region, ready_after=args.ready_after)
    async with standin:
        server = aiohttp.web.Server(standin, handler_cancellation=True)
        runner = aiohttp.web.ServerRunner(server, shutdown_timeout=0.5)
        sock: socket.socket | None = None
        started = False
        try:
            async with asyncio.timeout(args.startup_timeout):
                if args.pidfile:
                    _check_pidfile(args.pidfile)
                sock = _bind(args.host, args.port)
                await runner.setup()
                await aiohttp.web.SockSite(runner, sock).start()
                started = True
                if args.pidfile:
                    _write_pidfile(args.pidfile)
        except (OSError, RuntimeError, TimeoutError) as exc:
            if sock is not None and not started:
                sock.close()
            LOG.error(
                "region=%s cannot start on %s:%s: %s", args.region, args.host, args.port, exc or "startup timed out"
            )
            await runner.cleanup()
            return 1
        host = f"[{args.host}]" if ":" in args.host else args.host
        LOG.info(
            "ready region=%s url=http://%s:%s pid=%s kmock=%s",
            args.region,
            host,
            sock.getsockname()[1],
            os.getpid(),
            kmock.__version__,
        )
        if args.ready_after is not None:
            LOG.info(
                "rollout stand-in on: Deployments report a finished rollout %gs after a create or spec "
                'change (no pods exist; annotation %s: "true" opts out)',
                args.ready_after,
                NEVER_READY_ANNOTATION,
            )
        try:
            await stop.wait()
            LOG.info("stopping region=%s", args.region)
        finally:
            await standin.cancel_rollouts()
            await standin.end_watches()
            await runner.cleanup()
            if args.pidfile:
                _release_pidfile(args.pidfile)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s k8s-standin[%(process)d] %(levelname)s %(message)s"
    )
    logging.getLogger("aiohttp.access").setLevel(logging.INFO if args.log_level == "DEBUG" else logging.WARNING)
    if tuple(kmock.__version_tuple__[:2]) != SUPPORTED_KMOCK_SERIES:
        LOG.error("kmock %s found; this stand-in is written against kmock 0.8's internals", kmock.__version__)
        return 1
    return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
