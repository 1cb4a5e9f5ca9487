#!/usr/bin/env python3
"""Offline checks of the Portcullis Helm charts.

For every case (a chart and a set of values) the charts are linted and rendered with the Helm
library (helm-python-sdk), every rendered object is validated against the Kubernetes 1.33
schemas (kubernetes-validate, strict: unknown fields are errors), a few facts about the output
are asserted, and the manifests are run through Portcullis's own engine with a Pod Security
Standards "restricted" policy (`portcullis test`), which must admit them. Negative cases must
fail to render with a clear message.

    python3 -m pip install helm-python-sdk kubernetes-validate
    python3 helm/check.py --portcullis target/debug/portcullis

Prints one line per check and exits 1 if any failed (2 if it could not run at all).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

try:
    import helm_python as helm
    import kubernetes_validate
    import yaml  # PyYAML, a dependency of kubernetes-validate
except ImportError as e:  # pragma: no cover - environment problem
    sys.exit(
        f"check.py: {e}. Install the dependencies first:\n"
        "    python3 -m pip install helm-python-sdk kubernetes-validate"
    )

HELM_DIR = Path(__file__).resolve().parent
CI_DIR = HELM_DIR / "ci"
POLICY = CI_DIR / "restricted-policy.yaml"
KUBE_VERSION = "1.33.0"
NAMESPACE = "portcullis-system"
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "ValidatingWebhookConfiguration", "Namespace"}
# Custom resources the charts may render (kubernetes-validate has no schema for them).
CRD_API_VERSIONS = {"monitoring.coreos.com/v1"}
WORKLOAD_KINDS = {"Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"}


class CheckFailed(Exception):
    """A check's failure, with the reason shown to the user."""


Objects = list[dict[str, Any]]


@dataclass
class Case:
    chart: str
    name: str
    release: str
    values: dict[str, Any] = field(default_factory=dict)
    values_file: str | None = None
    # Assertions about the rendered objects; each returns nothing or raises CheckFailed.
    expect: Callable[[Objects], None] | None = None
    # For a negative case: a text the render error must contain.
    must_fail: str | None = None
    # Whether the rendered workloads must pass the restricted policy (host networking is
    # outside Pod Security baseline by design; such a case must be blocked instead).
    restricted: bool = True

    @property
    def label(self) -> str:
        return f"{self.chart} [{self.name}]"

    def load_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        if self.values_file:
            values = helm.values_from_yaml((CI_DIR / self.values_file).read_text())
        return deep_merge(values, self.values)


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- helpers for the expectations -------------------------------------------------------------


def ensure(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def only(objects: Objects, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o.get("kind") == kind and (name is None or o["metadata"]["name"] == name)
    ]
    what = f"{kind}/{name}" if name else kind
    ensure(len(found) == 1, f"expected exactly one {what}, found {len(found)}")
    return found[0]


def absent(objects: Objects, kind: str) -> None:
    names = [o["metadata"]["name"] for o in objects if o.get("kind") == kind]
    ensure(not names, f"expected no {kind}, found {names}")


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod_spec(obj)["containers"]:
        if c["name"] == name:
            return c
    raise CheckFailed(f"{obj['kind']}/{obj['metadata']['name']}: no container {name!r}")


def flags(c: dict[str, Any]) -> dict[str, str]:
    """`--name=value` arguments as a mapping (a bare `--flag` maps to "")."""
    out: dict[str, str] = {}
    for arg in c.get("args", []):
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            ensure(key not in out, f"argument --{key} given twice")
            out[key] = value
    return out


def expect_flags(c: dict[str, Any], want: dict[str, str | None]) -> None:
    """Each flag has the value given, or is absent where the value is None."""
    have = flags(c)
    for key, value in want.items():
        if value is None:
            ensure(key not in have, f"--{key} should not be given, got {have.get(key)!r}")
        else:
            ensure(have.get(key) == value, f"--{key}: expected {value!r}, got {have.get(key)!r}")


def volume(obj: dict[str, Any], name: str) -> dict[str, Any] | None:
    for v in pod_spec(obj).get("volumes", []):
        if v["name"] == name:
            return v
    return None


def rules_of(role: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...], tuple[str, ...]]]:
    return [
        (
            ",".join(r.get("apiGroups", [])),
            ",".join(r.get("resources", [])),
            tuple(sorted(r.get("resourceNames", []))),
            tuple(sorted(r.get("verbs", []))),
        )
        for r in role["rules"]
    ]


# What the audit reads (audit.enabled): list and watch, nothing else, on exactly these kinds.
AUDIT_RULES = [
    ("", "pods,services", (), ("list", "watch")),
    ("apps", "deployments,statefulsets,daemonsets,replicasets", (), ("list", "watch")),
    ("batch", "jobs,cronjobs", (), ("list", "watch")),
]


def expect_rbac(
    objects: Objects, role_name: str, vwc: str, secret: str, lease: str, audit: bool = True
) -> None:
    cluster_role = only(objects, "ClusterRole", role_name)
    vwc_group = "admissionregistration.k8s.io"
    vwc_res = "validatingwebhookconfigurations"
    ensure(
        sorted(rules_of(cluster_role))
        == sorted(
            [
                (vwc_group, vwc_res, (vwc,), ("delete", "get", "patch", "update")),
                (vwc_group, vwc_res, (), ("create",)),
            ]
            + (AUDIT_RULES if audit else [])
        ),
        f"ClusterRole {role_name}: unexpected rules {rules_of(cluster_role)}",
    )
    role = only(objects, "Role", role_name)
    ensure(
        sorted(rules_of(role))
        == sorted(
            [
                ("", "secrets", (secret,), ("get", "patch", "update")),
                ("", "secrets", (), ("create",)),
                ("coordination.k8s.io", "leases", (lease,), ("get", "patch", "update")),
                ("coordination.k8s.io", "leases", (), ("create",)),
            ]
        ),
        f"Role {role_name}: unexpected rules {rules_of(role)}",
    )
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        binding = only(objects, kind, role_name)
        ensure(binding["roleRef"]["name"] == role_name, f"{kind} {role_name}: wrong roleRef")


def expect_agent_common(objects: Objects, fullname: str, sa: str) -> dict[str, Any]:
    sts = only(objects, "StatefulSet", fullname)
    spec = pod_spec(sts)
    ensure(spec["serviceAccountName"] == sa, f"serviceAccountName {spec['serviceAccountName']!r}")
    agent = container(sts, "agent")
    env = {e["name"]: e for e in agent.get("env", [])}
    pod_name = env.get("PORTCULLIS_POD_NAME", {})
    ensure(
        pod_name.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
        "PORTCULLIS_POD_NAME must come from the downward API (metadata.name)",
    )
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    ensure(ports == {"webhook": 8443, "admin": 9090}, f"container ports {ports}")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = agent[probe]["httpGet"]
        ensure(get["path"] == path and get["port"] == "admin", f"{probe}: {get}")
    job = only(objects, "Job")
    annotations = job["metadata"]["annotations"]
    ensure(annotations.get("helm.sh/hook") == "pre-delete", "uninstall Job: not a pre-delete hook")
    ensure(
        annotations.get("helm.sh/hook-delete-policy") == "before-hook-creation,hook-succeeded",
        "uninstall Job: hook-delete-policy",
    )
    ensure(pod_spec(job)["serviceAccountName"] == sa, "uninstall Job: ServiceAccount")
    uninstall = pod_spec(job)["containers"][0]
    ensure(uninstall["args"][0] == "uninstall", "uninstall Job: not `portcullis-agent uninstall`")
    ensure(
        flags(uninstall).get("webhook-config-name") == flags(agent)["webhook-config-name"],
        "uninstall Job removes another webhook configuration than the agent programs",
    )
    selector = only(objects, "Service", fullname)["spec"]["selector"]
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    ensure(
        any(job_labels.get(k) != v for k, v in selector.items()),
        "the uninstall Job's pod would be selected by the webhook Service",
    )
    return sts


def expect_metrics_service(objects: Objects, fullname: str, port: int) -> None:
    metrics = only(objects, "Service", f"{fullname}-metrics")["spec"]
    ensure(metrics["type"] == "ClusterIP", f"metrics Service type {metrics['type']}")
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in metrics["ports"]}
    ensure(ports == {"http-metrics": (port, "admin")}, f"metrics Service {ports}")


def expect_service_monitor(objects: Objects, fullname: str, release: str) -> None:
    monitor = only(objects, "ServiceMonitor", fullname)
    service = only(objects, "Service", f"{fullname}-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    labels = service["metadata"]["labels"]
    ensure(
        all(labels.get(k) == v for k, v in selector.items()),
        f"the ServiceMonitor selects {selector}, the metrics Service has {labels}",
    )
    ensure(selector.get("app.kubernetes.io/instance") == release, f"selector {selector}")
    ensure(monitor["spec"]["endpoints"][0]["port"] == "http-metrics", "endpoint port")


def expect_agent_defaults(objects: Objects) -> None:
    fullname = "portcullis-agent"
    sts = expect_agent_common(objects, fullname, fullname)
    ensure(sts["spec"]["replicas"] == 2, "replicas should default to 2")
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    ensure(claims == ["cache"], f"volumeClaimTemplates {claims}")
    ensure(volume(sts, "cache") is None, "cache must come from the volumeClaimTemplate")
    ensure(pod_spec(sts).get("priorityClassName") == "system-cluster-critical", "priorityClassName")
    verify = only(objects, "Pod", f"{fullname}-verify")
    ensure(verify["metadata"]["annotations"]["helm.sh/hook"] == "test", "verify: a helm test hook")
    ensure(
        verify["spec"]["containers"][0]["args"] == ["verify", "--namespace=default"],
        f"verify args {verify['spec']['containers'][0]['args']}",
    )
    ensure(verify["spec"]["serviceAccountName"] == f"{fullname}-verify", "verify: its own account")
    role = only(objects, "Role", f"{fullname}-verify")
    ensure(role["metadata"]["namespace"] == "default", "verify Role: in the dry-run namespace")
    ensure(
        rules_of(role) == [("", "pods", (), ("create",))],
        f"verify Role: create pods only, got {rules_of(role)}",
    )
    quota = only(objects, "ResourceQuota", f"{fullname}-priority")["spec"]
    ensure(quota["hard"] == {"pods": "4"}, f"ResourceQuota hard {quota['hard']}")
    ensure(
        quota["scopeSelector"]["matchExpressions"]
        == [{"operator": "In", "scopeName": "PriorityClass", "values": ["system-cluster-critical"]}],
        f"ResourceQuota scope {quota['scopeSelector']}",
    )
    job = pod_spec(only(objects, "Job"))
    ensure(
        job.get("priorityClassName") == "system-cluster-critical",
        "the uninstall Job is scheduled with the agent's priority class",
    )
    for what, spec in (("StatefulSet", pod_spec(sts)), ("uninstall Job", job)):
        ensure(
            spec.get("nodeSelector") == {"kubernetes.io/os": "linux"},
            f"{what}: nodeSelector {spec.get('nodeSelector')} (the images are linux/amd64)",
        )
    agent = container(sts, "agent")
    expect_flags(
        agent,
        {
            "cluster": "prod-eu-1",
            "control-plane": "https://portcullis-control-plane.portcullis-system.svc:8443",
            "token-file": "/var/run/portcullis/token/token",
            "ca-file": None,
            "data-dir": "/var/lib/portcullis",
            "admin-listen": "0.0.0.0:9090",
            "webhook-listen": "0.0.0.0:8443",
            "namespace": NAMESPACE,
            "service-account": fullname,
            "service-name": fullname,
            "webhook-config-name": fullname,
            "cert-secret": f"{fullname}-webhook-tls",
            "lease-name": f"{fullname}-leader",
            "webhook-url": None,
            "exempt-namespaces": f"kube-system,{NAMESPACE}",
            "webhook-client-ca": None,
        },
    )
    ensure(volume(sts, "webhook-client-ca") is None, "no client CA volume by default")
    token = volume(sts, "token")["secret"]
    ensure(
        token["secretName"] == "portcullis-agent-token"
        and token["items"] == [{"key": "token", "path": "token"}],
        f"token volume {token}",
    )
    service = only(objects, "Service", fullname)
    ensure(
        service["spec"]["ports"][0]["port"] == 443
        and service["spec"]["ports"][0]["targetPort"] == "webhook",
        "Service: 443 -> webhook",
    )
    expect_metrics_service(objects, fullname, 9090)
    absent(objects, "ServiceMonitor")
    absent(objects, "NetworkPolicy")
    pdb = only(objects, "PodDisruptionBudget", fullname)["spec"]
    ensure(pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb, f"PDB {pdb}")
    absent(objects, "ConfigMap")
    expect_rbac(objects, fullname, fullname, f"{fullname}-webhook-tls", f"{fullname}-leader")


def expect_agent_host_network(objects: Objects) -> None:
    fullname = "portcullis-agent"
    sts = only(objects, "StatefulSet", fullname)
    spec = pod_spec(sts)
    ensure(spec.get("hostNetwork") is True, "hostNetwork")
    labels = only(objects, "Namespace", NAMESPACE)["metadata"]["labels"]
    ensure(
        labels.get("pod-security.kubernetes.io/enforce") == "privileged",
        f"with hostNetwork the namespace must allow it: {labels}",
    )
    ensure(spec.get("dnsPolicy") == "ClusterFirstWithHostNet", f"dnsPolicy {spec.get('dnsPolicy')}")
    agent = container(sts, "agent")
    expect_flags(agent, {"webhook-listen": "0.0.0.0:10443", "admin-listen": "0.0.0.0:10444"})
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    ensure(ports == {"webhook": 10443, "admin": 10444}, f"container ports {ports}")
    service = only(objects, "Service", fullname)["spec"]["ports"][0]
    ensure(service["targetPort"] == "webhook", f"Service targetPort {service['targetPort']}")


def expect_agent_inline_ca(objects: Objects) -> None:
    fullname = "portcullis-agent"
    sts = expect_agent_common(objects, fullname, fullname)
    expect_flags(container(sts, "agent"), {"ca-file": "/etc/portcullis/ca/ca.crt"})
    cm = only(objects, "ConfigMap", f"{fullname}-ca")
    ensure("BEGIN CERTIFICATE" in cm["data"]["ca.crt"], "CA ConfigMap holds no certificate")
    ensure(volume(sts, "ca")["configMap"]["name"] == f"{fullname}-ca", "CA volume")
    ensure(
        "checksum/ca" in sts["spec"]["template"]["metadata"].get("annotations", {}),
        "a changed CA must restart the agents (checksum/ca annotation)",
    )
    template = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    ensure(template.get("storageClassName") == "standard-rwo", "storageClassName")


def expect_agent_nondefault(objects: Objects) -> None:
    fullname = "edge-portcullis-agent"
    sa = "portcullis-agent-staging"
    sts = expect_agent_common(objects, fullname, sa)
    ensure(sts["spec"]["replicas"] == 3, "replicas")
    absent(objects, "ResourceQuota")  # priorityClassName "": nothing to allow
    expect_service_monitor(objects, fullname, "edge")
    labels = only(objects, "Namespace", NAMESPACE)["metadata"]["labels"]
    ensure(
        labels.get("pod-security.kubernetes.io/enforce") == "restricted"
        and labels.get("team") == "platform",
        f"Namespace labels {labels}",
    )
    policy = only(objects, "NetworkPolicy", fullname)["spec"]
    ensure(policy["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"],
           "the NetworkPolicy selects the agents")
    ensure(policy["policyTypes"] == ["Ingress", "Egress"], f"policyTypes {policy['policyTypes']}")
    webhook, metrics = policy["ingress"]
    ensure(webhook["ports"] == [{"port": 8443, "protocol": "TCP"}] and "from" not in webhook,
           f"webhook ingress {webhook}")
    ensure(metrics["ports"] == [{"port": 9090, "protocol": "TCP"}] and metrics["from"],
           f"metrics ingress {metrics}")
    control_plane, api_server, dns = policy["egress"]
    ensure(control_plane == {"ports": [{"port": 8443, "protocol": "TCP"}],
                             "to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
           f"control plane egress {control_plane} (the port comes from controlPlane.address)")
    ensure([p["port"] for p in api_server["ports"]] == [443, 6443], f"API server egress {api_server}")
    ensure({p["protocol"] for p in dns["ports"]} == {"UDP", "TCP"}, f"DNS egress {dns}")
    ensure("volumeClaimTemplates" not in sts["spec"], "cache.persistence.enabled=false keeps a PVC")
    cache = volume(sts, "cache")
    ensure(cache is not None and cache.get("emptyDir", {}).get("sizeLimit") == "512Mi", "emptyDir")
    ensure("priorityClassName" not in pod_spec(sts), "priorityClassName should be unset")
    agent = container(sts, "agent")
    expect_flags(
        agent,
        {
            "cluster": "staging-us-2",
            "ca-file": "/etc/portcullis/ca/ca.crt",
            "service-account": sa,
            "service-name": fullname,
            "webhook-config-name": "portcullis-staging",
            "cert-secret": "portcullis-staging-webhook-tls",
            "lease-name": "portcullis-staging-leader",
            "webhook-url": "https://portcullis-agent.staging.example.com/validate",
            "exempt-namespaces": f"kube-system,kube-public,monitoring,{NAMESPACE}",
            "log-format": "plain",
            "status-interval": "60",
            "webhook-client-ca": "/etc/portcullis/webhook-client-ca/ca.crt",
        },
    )
    client_ca = volume(sts, "webhook-client-ca")["configMap"]
    ensure(
        client_ca["name"] == "apiserver-webhook-client-ca"
        and client_ca["items"] == [{"key": "client-ca.pem", "path": "ca.crt"}],
        f"webhook client CA volume {client_ca}",
    )
    mounts = {m["name"]: m for m in agent["volumeMounts"]}
    ensure(
        mounts["webhook-client-ca"]["mountPath"] == "/etc/portcullis/webhook-client-ca",
        "webhook client CA mount",
    )
    ca = volume(sts, "ca")["secret"]
    ensure(
        ca["secretName"] == "portcullis-control-plane-ca"
        and ca["items"] == [{"key": "ca.pem", "path": "ca.crt"}],
        f"CA volume {ca}",
    )
    token = volume(sts, "token")["secret"]
    ensure(
        token["secretName"] == "staging-agent-token"
        and token["items"] == [{"key": "agent-token", "path": "token"}],
        f"token volume {token}",
    )
    ensure(
        agent["image"] == "registry.example.com/portcullis/portcullis-agent:0.2.0",
        f"image {agent['image']}",
    )
    expect_metrics_service(objects, fullname, 9090)
    pdb = only(objects, "PodDisruptionBudget", fullname)["spec"]
    ensure(pdb.get("minAvailable") == 2 and "maxUnavailable" not in pdb, f"PDB {pdb}")
    absent(objects, "ConfigMap")
    expect_rbac(
        objects,
        fullname,
        "portcullis-staging",
        "portcullis-staging-webhook-tls",
        "portcullis-staging-leader",
        audit=False,
    )
    ensure(flags(agent).get("audit") == "false", f"--audit {flags(agent).get('audit')}")


DATABASE_FLAGS = ("database-url", "database-password-file", "database-ca")


def expect_cp_pod(workload: dict[str, Any]) -> dict[str, Any]:
    """What every control-plane pod has, with either store; returns its container."""
    ensure(pod_spec(workload)["automountServiceAccountToken"] is False, "no API token needed")
    cp = container(workload, "control-plane")
    ensure(cp["args"][0] == "serve", "not `portcullis-control-plane serve`")
    expect_flags(
        cp,
        {
            "data-dir": "/var/lib/portcullis",
            "listen": "0.0.0.0:8443",
            "admin-listen": "0.0.0.0:9090",
            "admin-token-file": "/etc/portcullis/admin-token/token",
        },
    )
    mounts = {m["name"]: m["mountPath"] for m in cp["volumeMounts"]}
    ensure(mounts.get("data") == "/var/lib/portcullis", "data volume at /var/lib/portcullis")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        get = cp[probe]["httpGet"]
        ensure(get["path"] == path and get["port"] == "admin", f"{probe}: {get}")
    return cp


def expect_cp_common(objects: Objects, fullname: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The embedded sled store: a StatefulSet of one, nothing of PostgreSQL."""
    sts = only(objects, "StatefulSet", fullname)
    ensure(sts["spec"]["replicas"] == 1, "the control plane runs exactly one replica")
    absent(objects, "Deployment")
    absent(objects, "PodDisruptionBudget")
    cp = expect_cp_pod(sts)
    expect_flags(cp, {flag: None for flag in DATABASE_FLAGS})
    env = [e["name"] for e in cp.get("env", []) if e["name"].startswith("PORTCULLIS_DATABASE")]
    ensure(not env, f"database environment with sled: {env}")
    ensure(volume(sts, "database") is None and volume(sts, "database-ca") is None,
           "database volumes with sled")
    return sts, cp


def expect_cp_postgres(
    objects: Objects, fullname: str, replicas: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """PostgreSQL: a Deployment of `replicas` keeping nothing of its own, a disruption budget
    over exactly its pods, the replicas spread over nodes."""
    absent(objects, "StatefulSet")
    absent(objects, "PersistentVolumeClaim")
    deployment = only(objects, "Deployment", fullname)
    spec = deployment["spec"]
    ensure(spec["replicas"] == replicas, f"replicas {spec['replicas']}, expected {replicas}")
    ensure(
        spec["strategy"] == {"type": "RollingUpdate",
                             "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        f"a new replica is ready before an old one goes: {spec['strategy']}",
    )
    cp = expect_cp_pod(deployment)
    ensure(volume(deployment, "data") == {"name": "data", "emptyDir": {}},
           f"data dir: an emptyDir, got {volume(deployment, 'data')}")
    # Every replica serves the same identity: never one generated in its own data dir.
    expect_flags(cp, {"tls-cert": "/etc/portcullis/tls/tls.crt",
                      "tls-key": "/etc/portcullis/tls/tls.key", "tls-san": None,
                      "database-url": None})
    selector = spec["selector"]["matchLabels"]
    pdb = only(objects, "PodDisruptionBudget", fullname)["spec"]
    ensure(pdb["selector"]["matchLabels"] == selector, "the PodDisruptionBudget's selector")
    ensure(pdb.get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"PDB {pdb}")
    for service in (fullname, f"{fullname}-metrics"):
        ensure(only(objects, "Service", service)["spec"]["selector"] == selector,
               f"Service {service} selects the replicas")
    return deployment, cp


def database_env(cp: dict[str, Any]) -> dict[str, Any]:
    env = {e["name"]: e for e in cp.get("env", []) if e["name"].startswith("PORTCULLIS_DATABASE")}
    ensure(list(env) == ["PORTCULLIS_DATABASE_URL"], f"database environment {list(env)}")
    return env["PORTCULLIS_DATABASE_URL"]


def soft_anti_affinity(workload: dict[str, Any]) -> None:
    terms = pod_spec(workload)["affinity"]["podAntiAffinity"]
    ensure(list(terms) == ["preferredDuringSchedulingIgnoredDuringExecution"],
           f"anti-affinity must be soft (preferred): {list(terms)}")
    term = terms["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    ensure(term["topologyKey"] == "kubernetes.io/hostname"
           and term["labelSelector"]["matchLabels"] == workload["spec"]["selector"]["matchLabels"],
           f"anti-affinity term {term}")


def pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN [A-Z ]+-----\n[^-]+-----END [A-Z ]+-----\n?", text)


def expect_chart_tls(
    objects: Objects, fullname: str, workload: dict[str, Any], names: list[str]
) -> None:
    """The chart's own TLS identity (PostgreSQL, no certificate given): one Secret every replica
    mounts, a server certificate followed by the CA that clients trust."""
    secret = only(objects, "Secret", f"{fullname}-tls")
    ensure(secret["type"] == "kubernetes.io/tls", f"TLS Secret type {secret['type']}")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    ensure(sorted(data) == ["ca.crt", "ca.key", "tls.crt", "tls.key"], f"TLS keys {sorted(data)}")
    chain = pem_blocks(data["tls.crt"])
    ensure(len(chain) == 2 and chain[1].strip() == data["ca.crt"].strip(),
           "tls.crt: the server certificate followed by ca.crt")
    ensure("PRIVATE KEY-----" in data["tls.key"] and "PRIVATE KEY-----" in data["ca.key"], "keys")
    have = secret["metadata"]["annotations"]["portcullis.io/tls-names"].split(",")
    ensure(have == names, f"certificate names {have}, expected {names}")
    tls = volume(workload, "tls")["secret"]
    ensure(tls["secretName"] == f"{fullname}-tls"
           and tls["items"] == [{"key": "tls.crt", "path": "tls.crt"},
                                {"key": "tls.key", "path": "tls.key"}],
           f"the pods mount the certificate and key only: {tls}")
    annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
    ensure("checksum/tls" in annotations, "a certificate issued for other names restarts the pods")


def expect_generated_admin_token(
    objects: Objects, fullname: str, kind: str = "StatefulSet"
) -> None:
    secret = only(objects, "Secret", f"{fullname}-admin-token")
    token = base64.b64decode(secret["data"]["token"]).decode()
    ensure(len(token) >= 16, "generated admin token shorter than 16 characters")
    workload = only(objects, kind, fullname)
    ensure(
        volume(workload, "admin-token")["secret"]["secretName"] == f"{fullname}-admin-token",
        "admin token volume",
    )


def expect_cp_defaults(objects: Objects) -> None:
    fullname = "portcullis-control-plane"
    sts, cp = expect_cp_common(objects, fullname)
    ensure(
        pod_spec(sts).get("nodeSelector") == {"kubernetes.io/os": "linux"},
        "nodeSelector (the images are linux/amd64)",
    )
    svc = f"{fullname}.{NAMESPACE}"
    expect_flags(
        cp,
        {
            "tls-cert": None,
            "tls-key": None,
            "tokens-file": None,
            "tls-san": f"{fullname},{svc},{svc}.svc,{svc}.svc.cluster.local",
        },
    )
    claims = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    ensure(claims == ["data"], f"volumeClaimTemplates {claims}")
    expect_generated_admin_token(objects, fullname)
    ports = {
        p["name"]: (p["port"], p["targetPort"])
        for p in only(objects, "Service", fullname)["spec"]["ports"]
    }
    ensure(ports == {"grpc": (8443, "grpc")}, f"Service {ports}: admin HTTP must not share it")
    expect_metrics_service(objects, fullname, 9090)
    absent(objects, "ServiceMonitor")
    absent(objects, "NetworkPolicy")
    absent(objects, "ConfigMap")  # the dashboard is opt-in


def expect_cp_nondefault(objects: Objects) -> None:
    fullname = "fleet-portcullis-control-plane"
    sts, cp = expect_cp_common(objects, fullname)
    expect_service_monitor(objects, fullname, "fleet")
    dashboard = only(objects, "ConfigMap", f"{fullname}-dashboard")
    labels = dashboard["metadata"]["labels"]
    ensure(labels.get("grafana_dashboard") == "1" and labels.get("team") == "platform",
           f"dashboard labels {labels}")
    shipped = json.loads((HELM_DIR / "portcullis-control-plane/dashboards/portcullis.json").read_text())
    ensure(json.loads(dashboard["data"]["portcullis.json"]) == shipped,
           "the dashboard ConfigMap holds dashboards/portcullis.json as it is")
    labels = only(objects, "Namespace", NAMESPACE)["metadata"]["labels"]
    ensure(labels.get("pod-security.kubernetes.io/enforce") == "restricted", f"Namespace {labels}")
    policy = only(objects, "NetworkPolicy", fullname)["spec"]
    ensure(policy["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"],
           "the NetworkPolicy selects the control plane")
    grpc, metrics = policy["ingress"]
    ensure(grpc == {"ports": [{"port": "grpc", "protocol": "TCP"}]}, f"gRPC ingress {grpc}")
    ensure(metrics["ports"] == [{"port": "admin", "protocol": "TCP"}] and metrics["from"],
           f"metrics ingress {metrics}")
    ensure(len(policy["egress"]) == 1, f"egress beyond DNS: {policy['egress']}")
    expect_flags(
        cp,
        {
            "tls-cert": "/etc/portcullis/tls/tls.crt",
            "tls-key": "/etc/portcullis/tls/tls.key",
            "tls-san": None,
            "tokens-file": "/etc/portcullis/tokens/tokens.yaml",
            "changelog-keep": "500000",
            "shutdown-timeout": "30",
            "compaction-interval": "120",
        },
    )
    ensure(pod_spec(sts)["terminationGracePeriodSeconds"] == 40, "grace period = shutdown + 10")
    absent(objects, "Secret")
    ensure(
        volume(sts, "admin-token")["secret"]
        == {
            "secretName": "portcullis-admin",
            "defaultMode": 0o440,
            "items": [{"key": "admin-token", "path": "token"}],
        },
        "admin token volume",
    )
    ensure(
        volume(sts, "tls")["secret"]["secretName"] == "portcullis-control-plane-tls", "TLS volume"
    )
    ensure(
        volume(sts, "tokens")["secret"]["items"] == [{"key": "operators.yaml", "path": "tokens.yaml"}],
        "tokens volume",
    )
    service = only(objects, "Service", fullname)["spec"]
    ensure(service["type"] == "LoadBalancer", "Service type")
    ensure(service["ports"][0]["port"] == 443, "Service gRPC port")
    template = sts["spec"]["volumeClaimTemplates"][0]["spec"]
    ensure(template["resources"]["requests"]["storage"] == "20Gi", "PVC size")


def expect_cp_inline_tls(objects: Objects) -> None:
    fullname = "portcullis-control-plane"
    sts, cp = expect_cp_common(objects, fullname)
    secret = only(objects, "Secret", f"{fullname}-tls")
    ensure(secret["type"] == "kubernetes.io/tls", "TLS Secret type")
    expect_flags(cp, {"tls-cert": "/etc/portcullis/tls/tls.crt", "tls-san": None})
    ensure("volumeClaimTemplates" not in sts["spec"], "persistence.enabled=false keeps a PVC")
    ensure("emptyDir" in volume(sts, "data"), "data emptyDir")
    ensure(
        "checksum/tls" in sts["spec"]["template"]["metadata"].get("annotations", {}),
        "a changed certificate must restart the pod (checksum/tls annotation)",
    )
    expect_generated_admin_token(objects, fullname)


def expect_cp_extra_sans(objects: Objects) -> None:
    fullname = "portcullis-control-plane"
    sts, cp = expect_cp_common(objects, fullname)
    sans = flags(cp)["tls-san"].split(",")
    ensure(sans[-2:] == ["portcullis.example.com", "203.0.113.10"], f"--tls-san {sans}")
    ensure(
        f"{fullname}.{NAMESPACE}.svc.fleet.internal" in sans, "clusterDomain in the Service's name"
    )
    ensure("volumeClaimTemplates" not in sts["spec"], "existingClaim keeps a volumeClaimTemplate")
    ensure(
        volume(sts, "data")["persistentVolumeClaim"]["claimName"] == "portcullis-data",
        "existing claim",
    )


CP_AFFINITY = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["system"]}]}
            ]
        }
    }
}
PG_URL = "postgres://portcullis@pg-rw.databases.svc:5433/portcullis?sslmode=require"


def expect_cp_postgres_url_secret(objects: Objects) -> None:
    """ci/control-plane-postgres.yaml: the whole URL in a Secret, the chart's TLS identity."""
    fullname = "portcullis-control-plane"
    deployment, cp = expect_cp_postgres(objects, fullname, replicas=2)
    url = database_env(cp)
    ensure(url.get("valueFrom") == {"secretKeyRef": {"name": "portcullis-database", "key": "uri"}},
           f"PORTCULLIS_DATABASE_URL from the Secret's key uri: {url}")
    expect_flags(cp, {"database-password-file": None,
                      "database-ca": "/etc/portcullis/database-ca/ca.crt"})
    ensure(volume(deployment, "database") is None, "no password file with the URL in the Secret")
    ca = volume(deployment, "database-ca")["secret"]
    ensure(ca["secretName"] == "portcullis-database-ca"
           and ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}], f"database CA volume {ca}")
    soft_anti_affinity(deployment)
    pdb = only(objects, "PodDisruptionBudget", fullname)["spec"]
    ensure(pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb, f"PDB {pdb}")
    svc = f"{fullname}.{NAMESPACE}"
    expect_chart_tls(objects, fullname, deployment,
                     ["localhost", "127.0.0.1", "::1", fullname, svc, f"{svc}.svc",
                      f"{svc}.svc.cluster.local", "portcullis.example.com", "203.0.113.10"])
    expect_generated_admin_token(objects, fullname, "Deployment")
    egress = only(objects, "NetworkPolicy", fullname)["spec"]["egress"]
    ensure(len(egress) == 2, f"egress: DNS and the database, got {egress}")
    ensure(egress[1] == {"ports": [{"port": 6432, "protocol": "TCP"}],
                         "to": [{"namespaceSelector": {"matchLabels": {
                             "kubernetes.io/metadata.name": "databases"}}}]},
           f"database egress {egress[1]}")


def expect_cp_postgres_password(objects: Objects) -> None:
    """The URL in the values, only its password in the Secret (a file); the operator's own
    certificate, affinity and budget; 3 replicas."""
    fullname = "portcullis-control-plane"
    deployment, cp = expect_cp_postgres(objects, fullname, replicas=3)
    url = database_env(cp)
    ensure(url == {"name": "PORTCULLIS_DATABASE_URL", "value": PG_URL},
           f"PORTCULLIS_DATABASE_URL from the values: {url}")
    expect_flags(cp, {"database-password-file": "/etc/portcullis/database/password",
                      "database-ca": None})
    password = volume(deployment, "database")["secret"]
    ensure(password["secretName"] == "pg-app"
           and password["items"] == [{"key": "pw", "path": "password"}],
           f"password volume {password}")
    mounts = {m["name"]: m for m in cp["volumeMounts"]}
    ensure(mounts["database"] == {"name": "database", "mountPath": "/etc/portcullis/database",
                                  "readOnly": True}, f"password mount {mounts['database']}")
    ensure(volume(deployment, "database-ca") is None, "no database CA volume")
    ensure(pod_spec(deployment)["affinity"] == CP_AFFINITY,
           "the given affinity replaces the spread")
    pdb = only(objects, "PodDisruptionBudget", fullname)["spec"]
    ensure(pdb.get("minAvailable") == 2 and "maxUnavailable" not in pdb, f"PDB {pdb}")
    ensure([s["metadata"]["name"] for s in objects if s["kind"] == "Secret"]
           == [f"{fullname}-admin-token"], "no TLS Secret with tls.existingSecret")
    ensure(volume(deployment, "tls")["secret"]["secretName"] == "portcullis-tls", "TLS volume")
    egress = only(objects, "NetworkPolicy", fullname)["spec"]["egress"]
    ensure(egress[1] == {"ports": [{"port": 5433, "protocol": "TCP"}]},
           f"database egress on database.url's port, anywhere: {egress[1]}")


AGENT_REQUIRED = {
    "clusterName": "prod-eu-1",
    "controlPlane": {"address": "https://portcullis-control-plane.portcullis-system.svc:8443"},
}
FAKE_PEM = (
    "-----BEGIN CERTIFICATE-----\nMIIBfake0certificate0for0rendering0only\n-----END CERTIFICATE-----\n"
)
FAKE_KEY = "-----BEGIN PRIVATE KEY-----\nMIGHfake0key0for0rendering0only\n-----END PRIVATE KEY-----\n"

CASES = [
    Case("portcullis-agent", "defaults", "portcullis-agent", AGENT_REQUIRED,
         expect=expect_agent_defaults),
    Case("portcullis-agent", "inline-ca", "portcullis-agent",
         deep_merge(AGENT_REQUIRED, {"controlPlane": {"ca": FAKE_PEM},
                                     "cache": {"persistence": {"storageClassName": "standard-rwo"}}}),
         expect=expect_agent_inline_ca),
    Case("portcullis-agent", "nondefault", "edge", values_file="agent-nondefault.yaml",
         expect=expect_agent_nondefault),
    Case("portcullis-agent", "host-network", "portcullis-agent",
         deep_merge(AGENT_REQUIRED, {"hostNetwork": True, "webhook": {"port": 10443},
                                     "adminPort": 10444, "namespace": {"create": True}}),
         expect=expect_agent_host_network, restricted=False),
    Case("portcullis-control-plane", "defaults", "portcullis-control-plane",
         expect=expect_cp_defaults),
    Case("portcullis-control-plane", "nondefault", "fleet",
         values_file="control-plane-nondefault.yaml", expect=expect_cp_nondefault),
    Case("portcullis-control-plane", "inline-tls", "portcullis-control-plane",
         {"tls": {"cert": FAKE_PEM, "key": FAKE_KEY}, "persistence": {"enabled": False}},
         expect=expect_cp_inline_tls),
    Case("portcullis-control-plane", "extra-sans", "portcullis-control-plane",
         {"tls": {"extraSans": ["portcullis.example.com", "203.0.113.10"],
                  "clusterDomain": "fleet.internal"},
          "persistence": {"existingClaim": "portcullis-data"}},
         expect=expect_cp_extra_sans),
    Case("portcullis-control-plane", "postgres", "portcullis-control-plane",
         values_file="control-plane-postgres.yaml", expect=expect_cp_postgres_url_secret),
    Case("portcullis-control-plane", "postgres-password", "portcullis-control-plane",
         {"database": {"existingSecret": "pg-app", "passwordKey": "pw", "url": PG_URL},
          "replicas": 3, "tls": {"existingSecret": "portcullis-tls"},
          "podDisruptionBudget": {"minAvailable": 2},
          "affinity": CP_AFFINITY,
          "networkPolicy": {"enabled": True}},
         expect=expect_cp_postgres_password),
    # Negative cases: the render must fail, with this text in the error.
    Case("portcullis-agent", "no cluster name", "portcullis-agent",
         {"controlPlane": AGENT_REQUIRED["controlPlane"]},
         must_fail="clusterName is required"),
    Case("portcullis-agent", "no control plane", "portcullis-agent",
         {"clusterName": "prod-eu-1"}, must_fail="controlPlane.address is required"),
    Case("portcullis-agent", "exempt pattern", "portcullis-agent",
         deep_merge(AGENT_REQUIRED, {"exemptNamespaces": ["kube-system", "*"]}),
         must_fail='exemptNamespaces: "*" is not a namespace name'),
    Case("portcullis-agent", "two CA sources", "portcullis-agent",
         deep_merge(AGENT_REQUIRED, {"controlPlane": {"ca": FAKE_PEM, "caSecret": {"name": "x"}}}),
         must_fail="give at most one of controlPlane.ca"),
    Case("portcullis-agent", "failure policy is not a value", "portcullis-agent",
         deep_merge(AGENT_REQUIRED, {"failurePolicy": "Fail"}),
         must_fail="failurePolicy"),
    Case("portcullis-control-plane", "cert without key", "portcullis-control-plane",
         {"tls": {"cert": FAKE_PEM}}, must_fail="tls.cert and tls.key go together"),
    Case("portcullis-control-plane", "replicas without a database", "portcullis-control-plane",
         {"replicas": 3},
         must_fail="replicas: 3 needs a shared database: set database.existingSecret (PostgreSQL); "
                   "the embedded sled store serves one replica"),
    Case("portcullis-control-plane", "database url without its Secret", "portcullis-control-plane",
         {"database": {"url": "postgres://portcullis@pg:5432/portcullis"}},
         must_fail="database.url and database.caSecret need database.existingSecret"),
    Case("portcullis-control-plane", "password in database url", "portcullis-control-plane",
         {"database": {"existingSecret": "pg",
                       "url": "postgres://portcullis:hunter2@pg:5432/portcullis"}},
         must_fail="database.url: keep the password out of the values"),
]


# --- the checks -------------------------------------------------------------------------------


class Runner:
    def __init__(self, portcullis: Path, out_dir: Path, keep: bool = False) -> None:
        self.portcullis = portcullis
        self.out_dir = out_dir
        self.keep = keep
        self.passed = 0
        self.failed: list[str] = []

    def check(self, what: str, fn: Callable[[], str | None]) -> bool:
        try:
            detail = fn()
        except CheckFailed as e:
            self.fail(what, str(e))
            return False
        except helm.HelmError as e:
            self.fail(what, f"{type(e).__name__}: {e}")
            return False
        except Exception as e:  # a bug in a check: say where
            self.fail(what, f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
            return False
        self.passed += 1
        print(f"ok    {what}" + (f": {detail}" if detail else ""), flush=True)
        return True

    def fail(self, what: str, reason: str) -> None:
        self.failed.append(what)
        indented = reason.strip().replace("\n", "\n        ")
        print(f"FAIL  {what}: {indented}", flush=True)

    # -- per case --

    def run_case(self, case: Case) -> None:
        chart_dir = HELM_DIR / case.chart
        values = case.load_values()
        if case.must_fail:
            self.check(f"{case.label}: render fails", lambda: self.render_fails(case, values))
            return
        if not self.check(f"{case.label}: lint", lambda: self.lint(chart_dir, values)):
            return
        rendered: dict[str, Any] = {}
        if not self.check(
            f"{case.label}: render",
            lambda: self.render(case, chart_dir, values, rendered),
        ):
            return
        objects = rendered["objects"]
        case_dir: Path = rendered["dir"]
        self.check(
            f"{case.label}: kubernetes-validate --strict {KUBE_VERSION}",
            lambda: self.validate(objects),
        )
        if case.expect is not None:
            expect = case.expect
            self.check(f"{case.label}: rendered values", lambda: expect(objects))
        if case.restricted:
            self.check(
                f"{case.label}: portcullis test -p {POLICY.relative_to(HELM_DIR.parent)}",
                lambda: self.policy_test(case_dir),
            )
        else:
            self.check(
                f"{case.label}: portcullis test -p {POLICY.relative_to(HELM_DIR.parent)} blocks it",
                lambda: self.policy_test_blocks(case_dir),
            )
        if case.chart == "portcullis-agent":
            self.check(
                f"{case.label}: portcullis-agent accepts the rendered arguments",
                lambda: self.agent_args(objects),
            )

    def agent_args(self, objects: Objects) -> str:
        """Every container running portcullis-agent: its arguments parse (`--help` after
        them makes the binary stop once they are accepted)."""
        agent = self.portcullis.with_name("portcullis-agent")
        ensure(agent.is_file(), f"{agent}: not built")
        checked = []
        for obj in objects:
            if obj.get("kind") == "Pod":
                spec = obj.get("spec")
            else:
                spec = obj.get("spec", {}).get("template", {}).get("spec")
            for c in (spec or {}).get("containers", []):
                if c.get("command", [None])[0] != "portcullis-agent":
                    continue
                out = subprocess.run(
                    [str(agent), *c.get("args", []), "--help"],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "PORTCULLIS_POD_NAME": "check"},
                )
                ensure(
                    out.returncode == 0,
                    f"{obj['kind']}/{obj['metadata']['name']} container {c['name']}: "
                    f"{out.stderr.strip()}",
                )
                checked.append(f"{obj['kind']}/{c['name']}")
        ensure(bool(checked), "no portcullis-agent container found")
        return ", ".join(checked)

    def lint(self, chart_dir: Path, values: dict[str, Any]) -> str:
        report = helm.lint(
            chart_dir,
            values,
            strict=True,
            namespace=NAMESPACE,
            kube_version=f"v{KUBE_VERSION}",
        )
        problems = [
            f"[{m.get('severity')}] {m.get('path')}: {m.get('error')}"
            for m in report.get("messages", [])
            if (m.get("severity") or 0) >= 2
        ]
        problems += [str(e) for e in report.get("errors") or []]
        if problems:
            raise CheckFailed("\n".join(problems))
        infos = sum(1 for m in report.get("messages", []) if m.get("severity") == 1)
        return f"no warnings or errors ({infos} info)"

    def render(
        self,
        case: Case,
        chart_dir: Path,
        values: dict[str, Any],
        result: dict[str, Any],
    ) -> str:
        with helm.Chart.load(chart_dir) as chart:
            manifests = chart.render(
                values, name=case.release, namespace=NAMESPACE, is_install=True
            )
        case_dir = self.out_dir / case.chart / case.name.replace(" ", "-")
        case_dir.mkdir(parents=True, exist_ok=True)
        objects: Objects = []
        notes = ""
        for template, text in sorted(manifests.items()):
            base = Path(template).name
            if base == "NOTES.txt":
                notes = text
                continue
            if not base.endswith((".yaml", ".yml")) or not text.strip():
                continue
            (case_dir / base).write_text(text)
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc["__template"] = template
                    objects.append(doc)
        if not notes.strip():
            raise CheckFailed("NOTES.txt rendered empty")
        if not objects:
            raise CheckFailed("no objects rendered")
        seen: set[tuple[str, str, str]] = set()
        for obj in objects:
            meta = obj.get("metadata") or {}
            key = (obj.get("kind", "?"), meta.get("namespace", ""), meta.get("name", "?"))
            if key in seen:
                raise CheckFailed(f"{'/'.join(key)} rendered twice")
            seen.add(key)
            # (The `helm test` Role and RoleBinding live in the namespace the test dry-runs in.)
            verify_rbac = obj.get("kind") in ("Role", "RoleBinding") and (
                meta.get("labels", {}).get("app.kubernetes.io/component") == "verify"
            )
            if (
                obj.get("kind") not in CLUSTER_SCOPED
                and not verify_rbac
                and meta.get("namespace") != NAMESPACE
            ):
                raise CheckFailed(f"{key[0]}/{key[2]} does not carry the release namespace")
        for obj in objects:
            del obj["__template"]
        result["objects"] = objects
        result["dir"] = case_dir
        kinds = sorted({o["kind"] for o in objects})
        where = f" in {case_dir}" if self.keep else ""
        return f"{len(objects)} objects ({', '.join(kinds)}){where}"

    def validate(self, objects: Objects) -> str:
        errors = []
        for obj in objects:
            what = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{what}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                if obj.get("apiVersion") in CRD_API_VERSIONS:
                    continue  # a CRD's kind: checked by the case's expectations instead
                errors.append(f"{what}: {e.message}")
        if errors:
            raise CheckFailed("\n".join(errors))
        return f"{len(objects)} objects valid"

    def policy_test(self, manifests: Path) -> str:
        cmd = [str(self.portcullis), "test", "-p", str(POLICY), "-f", str(manifests), "-o", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        try:
            results = json.loads(proc.stdout) if proc.stdout.strip() else []
        except json.JSONDecodeError:
            results = None
        if proc.returncode != 0:
            lines = [f"exit code {proc.returncode} from {' '.join(cmd)}"]
            for r in results or []:
                if r.get("decision") != "allow" and r.get("decision") != "skipped":
                    lines.append(f"{r['kind']}/{r['name']}: {r['decision']}")
                    lines += [
                        f"  [{f['policy']}] {f['rule']} at {f['path']}: {f['message']}"
                        for f in r.get("findings", [])
                    ]
            if results is None:
                lines.append(proc.stdout.strip())
            if proc.stderr.strip():
                lines.append(proc.stderr.strip())
            raise CheckFailed("\n".join(lines))
        if results is None:
            raise CheckFailed(f"`portcullis test -o json` printed no JSON: {proc.stdout[:500]}")
        workloads = [r for r in results if r.get("kind") in WORKLOAD_KINDS]
        not_evaluated = [
            f"{r['kind']}/{r['name']}: {r.get('decision')} {r.get('skipped', '')}".strip()
            for r in workloads
            if r.get("decision") != "allow"
        ]
        if not workloads or not_evaluated:
            raise CheckFailed(
                "workloads were not evaluated and admitted: " + ("; ".join(not_evaluated) or "none")
            )
        return f"exit 0, {len(workloads)} workloads admitted ({', '.join(sorted(r['kind'] + '/' + r['name'] for r in workloads))})"

    def policy_test_blocks(self, manifests: Path) -> str:
        cmd = [str(self.portcullis), "test", "-p", str(POLICY), "-f", str(manifests), "-o", "json"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        ensure(proc.returncode == 1, f"exit code {proc.returncode}, expected 1: {proc.stderr}")
        results = json.loads(proc.stdout)
        blocked = [
            f"{r['kind']}/{r['name']}"
            for r in results
            if r.get("decision") == "block"
            and any("host" in f["rule"].lower() for f in r.get("findings", []))
        ]
        ensure(bool(blocked), "nothing was blocked for host networking")
        return f"exit 1, blocked for host networking: {', '.join(blocked)}"

    def render_fails(self, case: Case, values: dict[str, Any]) -> str:
        with helm.Chart.load(HELM_DIR / case.chart) as chart:
            try:
                chart.render(values, name=case.release, namespace=NAMESPACE, is_install=True)
            except helm.HelmError as e:
                message = str(e)
                if case.must_fail not in message:
                    raise CheckFailed(
                        f"failed, but without {case.must_fail!r} in the message: {message}"
                    ) from None
                reason = re.sub(r"^.*(execution error at \([^)]*\)|chart\(s\)): *", "", message, flags=re.S)
                return "refused: " + " ".join(reason.split())
        raise CheckFailed(f"rendered, but should fail with {case.must_fail!r}")

    def chart_tls_kept(self) -> str:
        """With PostgreSQL and no certificate given, the chart's CA survives `helm upgrade`
        (agents trust it), and its server certificate is issued again, from that CA, only when
        the names change. `lookup` answers nothing offline, so this renders a copy of the chart
        whose lookup returns the Secret of the previous render."""
        chart = self.out_dir / "chart-tls-upgrade" / "portcullis-control-plane"
        shutil.copytree(HELM_DIR / "portcullis-control-plane", chart, dirs_exist_ok=True)
        template = chart / "templates" / "secret-tls.yaml"
        lookup = 'lookup "v1" "Secret" .Release.Namespace $name'
        text = template.read_text()
        ensure(text.count(lookup) == 1, f"{lookup!r} not found once in secret-tls.yaml")
        previous = "((.Values.global | default dict).previous | default dict)"
        template.write_text(text.replace(lookup, previous))
        fullname = "portcullis-control-plane"

        def render(
            values: dict[str, Any], previous: dict[str, Any] | None
        ) -> tuple[dict[str, Any], str]:
            values = deep_merge({"database": {"existingSecret": "pg"}}, values)
            if previous is not None:
                values["global"] = {"previous": previous}
            with helm.Chart.load(chart) as loaded:
                manifests = loaded.render(values, name=fullname, namespace=NAMESPACE,
                                          is_install=previous is None)
            objects = [d for name, text in manifests.items() if name.endswith(".yaml")
                       for d in yaml.safe_load_all(text) if d]
            deployment = only(objects, "Deployment", fullname)
            return (only(objects, "Secret", f"{fullname}-tls"),
                    deployment["spec"]["template"]["metadata"]["annotations"]["checksum/tls"])

        installed, checksum = render({}, None)
        upgraded, same_checksum = render({}, installed)
        ensure(upgraded["data"] == installed["data"], "an upgrade issued the identity again")
        ensure(same_checksum == checksum, "an upgrade with the same names restarts the pods")
        renamed, new_checksum = render({"tls": {"extraSans": ["cp.example.com"]}}, installed)
        old, new = installed["data"], renamed["data"]
        ensure(new["ca.crt"] == old["ca.crt"] and new["ca.key"] == old["ca.key"],
               "new names replaced the CA the agents trust")
        ensure(new["tls.crt"] != old["tls.crt"], "new names did not issue the certificate again")
        chain = pem_blocks(base64.b64decode(new["tls.crt"]).decode())
        kept_ca = base64.b64decode(old["ca.crt"]).decode().strip()
        ensure(len(chain) == 2 and chain[1].strip() == kept_ca,
               "the new certificate is not followed by the kept CA")
        ensure("cp.example.com" in renamed["metadata"]["annotations"]["portcullis.io/tls-names"],
               "names annotation")
        ensure(new_checksum != checksum, "a certificate for other names does not restart the pods")
        return "the CA is kept; for new names the certificate is issued again, the pods restarted"

    def policy_blocks(self) -> str:
        """The policy is not vacuous: it blocks a privileged pod."""
        bad = self.out_dir / "policy-sanity" / "privileged-pod.yaml"
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_text(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: privileged, namespace: default}\n"
            "spec:\n  containers:\n  - name: c\n    image: busybox:1.36\n"
            "    securityContext: {privileged: true}\n"
        )
        cmd = [str(self.portcullis), "test", "-p", str(POLICY), "-f", str(bad)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 1:
            raise CheckFailed(
                f"expected exit code 1 (blocked), got {proc.returncode}:\n{proc.stdout}{proc.stderr}"
            )
        return "a privileged pod is blocked (exit 1)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--portcullis",
        required=True,
        type=Path,
        help="the portcullis CLI binary (e.g. target/debug/portcullis)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="write the rendered manifests here (kept) instead of a temporary directory",
    )
    args = parser.parse_args()

    portcullis = args.portcullis.resolve()
    if not (portcullis.is_file() and os.access(portcullis, os.X_OK)):
        print(f"check.py: --portcullis {args.portcullis}: not an executable file", file=sys.stderr)
        return 2

    out_dir = args.out.resolve() if args.out else Path(tempfile.mkdtemp(prefix="portcullis-helm-"))
    if args.out:
        out_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"helm library {helm.helm_sdk_version()}, kubernetes-validate "
        f"{kubernetes_validate.__version__}, Kubernetes {KUBE_VERSION}, {portcullis}",
        flush=True,
    )
    runner = Runner(portcullis, out_dir, keep=bool(args.out))
    try:
        runner.check(f"policy {POLICY.relative_to(HELM_DIR.parent)} blocks", runner.policy_blocks)
        for case in CASES:
            runner.run_case(case)
        runner.check(
            "portcullis-control-plane [postgres]: the chart's TLS identity across upgrades",
            runner.chart_tls_kept,
        )
    finally:
        if not args.out:
            shutil.rmtree(out_dir, ignore_errors=True)

    total = runner.passed + len(runner.failed)
    if runner.failed:
        print(f"\nFAILED: {len(runner.failed)} of {total} checks:", file=sys.stderr)
        for what in runner.failed:
            print(f"  {what}", file=sys.stderr)
        return 1
    print(f"\nall {total} checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
