#!/usr/bin/env python3
"""Checks the keyless Helm chart (helm/keyless) and its examples (helm/examples).

Renders the chart with helm-python-sdk (Helm's own Go SDK, no helm binary) as a shared
gateway and, through helm/examples/app-chart, as a native sidecar, each with AKS workload
identity on and off; validates every rendered object against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest Kubernetes the chart
declares and the newest the validator knows (the optional ServiceMonitor, a Prometheus
Operator CRD those schemas lack, is checked field by field); and asserts what issue 6 asks
of the chart, and that the chart matches the keyless it deploys (src/config.rs).

    python3 -m venv tests/helm/.venv
    tests/helm/.venv/bin/pip install -r tests/helm/requirements.txt
    tests/helm/.venv/bin/python tests/helm/check_chart.py

Exits non-zero if any check fails; the last line is `N passed, N failed`.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "keyless"
EXAMPLES = ROOT / "helm" / "examples"
CONFIG_RS = ROOT / "src" / "config.rs"

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
ENDPOINT = "https://my-resource.openai.azure.com"
WI_LABEL = "azure.workload.identity/use"
WI_CLIENT_ID = "azure.workload.identity/client-id"
# keyless config keys the chart sets itself, as flags, from dedicated values rather than from
# `config` (values.schema.json rejects them there): key -> (flag, the values that set it).
CHART_SET_KEYS = {
    "listen": ("--listen", "port, sidecar.listenAddress, sidecar.port"),
    "admin_listen": ("--admin-listen", "admin.enabled, admin.port"),
    "shutdown_grace": ("--shutdown-grace", "shutdownGrace"),
    "ca_file": ("--ca-file", "caBundle"),
}
# Config keys the chart writes from dedicated values rather than from `config` (which
# rejects them): key -> the values that set it.
CHART_WRITTEN_KEYS = {"apps": "gateway.apps"}
# The keyless binaries cargo builds (CI runs this after both builds): the rendered config,
# flags and environment are handed to `keyless check --simulate`, which refuses what
# `keyless serve` would refuse, offline.
KEYLESS_BINARIES = [ROOT / "target" / "release" / "keyless", ROOT / "target" / "debug" / "keyless"]
HASH_A = "a" * 64
HASH_B = "0123456789abcdef" * 4
# Loopback, port 1: should `keyless check` ever dial Redis, it dials nothing outside.
REDIS_URL = "redis://:s3cret-pw@127.0.0.1:1"
SRC = ROOT / "src"
ADMIN_PORT = 8788

passed = 0
failed = 0


def check(name: str, condition: bool, detail: str = "") -> None:
    """Records one check and prints its outcome."""
    global passed, failed
    if condition:
        passed += 1
        print(f"ok   {name}")
    else:
        failed += 1
        print(f"FAIL {name}" + (f": {detail}" if detail else ""))


def case(function: Callable[[], None]) -> Callable[[], None]:
    """Runs a group of checks; an exception inside it counts as one failure, not a crash."""

    def run() -> None:
        print(f"\n# {function.__name__}: {(function.__doc__ or '').strip()}")
        try:
            function()
        except Exception as error:  # noqa: BLE001 - report and carry on with the other cases
            traceback.print_exc()
            check(f"{function.__name__} ran to the end", False, f"{type(error).__name__}: {error}")

    CASES.append(run)
    return run


CASES: list[Callable[[], None]] = []


# --- rendering and validation --------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def render(chart_dir: Path, values: dict[str, Any], release: str = "kl", namespace: str = "ai") -> list[dict[str, Any]]:
    """Renders a chart offline; returns its Kubernetes objects (NOTES.txt and empty documents left out)."""
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name=release, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("_source", path)
                objects.append(document)
    return objects


def notes(chart_dir: Path, values: dict[str, Any]) -> str:
    with helm.Chart.load(chart_dir) as chart:
        manifests = chart.render(values, name="kl", namespace="ai", is_install=True)
    return "".join(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def min_kube_version(chart_dir: Path) -> str:
    """The oldest Kubernetes minor version the chart's kubeVersion constraint admits."""
    constraint = yaml.safe_load((chart_dir / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(?:\.\d+)?(?:-0)?", constraint.strip())
    if not match:
        raise ValueError(f"{chart_dir}/Chart.yaml: kubeVersion {constraint!r} is not of the form >=X.Y.Z-0")
    return f"{match[1]}.{match[2]}"


def validate(objects: list[dict[str, Any]], versions: list[str], label: str) -> None:
    """Validates every object against the Kubernetes schemas of each version (strict)."""
    check(f"{label}: renders at least one object", bool(objects))
    for version in versions:
        problems = []
        for obj in objects:
            doc = {k: v for k, v in obj.items() if k != "_source"}
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                problems.append(f"{obj['_source']} {obj['kind']}/{obj['metadata']['name']} at {path or '.'}: {error.message}")
            except Exception as error:  # SchemaNotFoundError and friends carry .message
                problems.append(f"{obj['_source']} {obj.get('kind')}: {getattr(error, 'message', error)}")
        check(
            f"{label}: {len(objects)} objects valid against Kubernetes {version} schemas",
            not problems,
            "\n    " + "\n    ".join(problems),
        )


def kinds(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = kinds(objects).get(kind, [])
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}, rendered {len(found)}")
    return found[0]


def container(pod_spec: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    listed = pod_spec.get("initContainers" if init else "containers", [])
    for c in listed:
        if c["name"] == name:
            return c
    raise AssertionError(f"no {'init ' if init else ''}container {name!r} in {[c['name'] for c in listed]}")


def config_file(objects: list[dict[str, Any]]) -> tuple[str, str]:
    """The config.toml the release renders, and the kind that holds it (ConfigMap or Secret)."""
    holders = [(o["kind"], o) for o in objects if "config.toml" in (o.get("data") or {}) | (o.get("stringData") or {})]
    if len(holders) != 1:
        raise AssertionError(f"expected one object with config.toml, found {[k for k, _ in holders]}")
    kind, holder = holders[0]
    return ((holder.get("data") or {}) | (holder.get("stringData") or {}))["config.toml"], kind


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def keyless_accepts(objects: list[dict[str, Any]], label: str, init: bool = False) -> None:
    """Hands the release's keyless what its pod would: config.toml, the container's flags
    (`check` for `serve`, the file's path for /etc/keyless/config.toml; --ca-file left out,
    its file being the cluster's) and KEYLESS_REDIS_URL (from the rendered Secret, or a
    stand-in for an existing one), and asserts that `keyless check --simulate` accepts them.
    Offline: the simulator stands in for the endpoint (so configs given here have no
    backend with an endpoint of its own), and nothing dials Redis before serving."""
    binary = next((b for b in KEYLESS_BINARIES if b.exists()), None)
    if binary is None:
        print(f"skip {label}: keyless accepts it (no keyless built: cargo build)")
        return
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    keyless = container(pod, "keyless", init=init)
    text, _ = config_file(objects)
    secrets = {o["metadata"]["name"]: o.get("stringData") or {} for o in objects if o["kind"] == "Secret"}
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "KEYLESS_LOG": "error"}
    for name, entry in env_of(keyless).items():
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[name] = secrets.get(ref["name"], {}).get(ref["key"], "redis://127.0.0.1:1")
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.toml"
        config_path.write_text(text)
        args = []
        for a in keyless["args"]:
            if a == "serve":
                args.append("check")
            elif a.startswith("--config="):
                args.append(f"--config={config_path}")
            elif not a.startswith("--ca-file="):
                args.append(a)
        run = subprocess.run([str(binary)] + args + ["--simulate"], env=env, capture_output=True, text=True, timeout=60, check=False)
    check(f"{label}: keyless accepts the config, flags and environment the pod gives it", run.returncode == 0 and "Configuration: ok" in run.stdout, f"exit {run.returncode}: {run.stdout}{run.stderr}\n{text}")


def arg_value(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


def expect_render_error(values: dict[str, Any], needle: str, label: str, chart_dir: Path = CHART) -> None:
    try:
        render(chart_dir, values)
    except helm.HelmError as error:
        check(label, needle in str(error), f"error does not mention {needle!r}: {error}")
    else:
        check(label, False, "rendered without error")


# --- what keyless accepts (read from its source, so the chart cannot drift from it) ---------


def keyless_config_keys() -> set[str]:
    """The top-level keys of the config file: the fields of `struct RawConfig` (serde reads
    the file into it, denying unknown fields)."""
    text = CONFIG_RS.read_text()
    match = re.search(r"\nstruct RawConfig \{(.*?)\n\}", text, re.S)
    if not match:
        raise AssertionError(f"{CONFIG_RS}: struct RawConfig not found")
    keys = set(re.findall(r"^    ([a-z_]+): ", match[1], re.M))
    if not keys:
        raise AssertionError(f"{CONFIG_RS}: struct RawConfig has no fields this check can read")
    return keys


def keyless_flags() -> set[str]:
    """The long flags of `keyless serve`'s Flags struct: field names in kebab case, or long = "..."."""
    text = CONFIG_RS.read_text()
    body = re.search(r"pub struct Flags \{(.*?)\n\}", text, re.S)
    if not body:
        raise AssertionError(f"{CONFIG_RS}: struct Flags not found")
    flags = set()
    for attrs, field in re.findall(r"((?:\s*#\[arg\([^\n]*\)\]\n)+)\s*pub (\w+):", body[1]):
        explicit = re.search(r'long\s*=\s*"([^"]+)"', attrs)
        flags.add("--" + (explicit[1] if explicit else field.replace("_", "-")))
    return flags


# --- values -------------------------------------------------------------------------------

GATEWAY_WI_ON = {
    "config": {
        "endpoint": ENDPOINT,
        "models": {"gpt-4o-mini": "prod-4o-mini", "gpt-4.1": "prod-41"},
        "max_body_bytes": 33554432,
        "response_timeout": "15m",
    },
    "workloadIdentity": {"enabled": True, "clientId": CLIENT_ID},
    "serviceAccount": {"annotations": {"team": "ai"}},
    "pdb": {"enabled": True},
    "autoscaling": {"enabled": True, "targetMemoryUtilizationPercentage": 80},
    "networkPolicy": {"enabled": True, "egress": {"enabled": True}, "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]},
    "admin": {"enabled": True},
    "gateway": {
        "apps": [
            {"name": "billing", "models": ["gpt-4o-mini"], "rpm": 60, "tpm": 100000, "keySha256": HASH_A},
            {"name": "search", "keySha256": HASH_B},
        ]
    },
    "limits": {"redisUrl": REDIS_URL},
    "caBundle": {"configMap": "corp-ca"},
    "shutdownGrace": "1m30s",
}

GATEWAY_WI_OFF = {
    "config": {"endpoint": ENDPOINT, "credential": "managed-identity"},
    "workloadIdentity": {"enabled": False},
    "gateway": {"allowUnauthenticated": True},
}


def app_chart(tmp: Path) -> Path:
    """A copy of helm/examples/app-chart with its keyless dependency resolved the way a user
    does it (`helm dependency update`, from the file:// repository in its Chart.yaml)."""
    shutil.copytree(CHART, tmp / "keyless")
    shutil.copytree(EXAMPLES / "app-chart", tmp / "examples" / "app-chart", ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    helm.dependency_update(tmp / "examples" / "app-chart")
    return tmp / "examples" / "app-chart"


# --- cases --------------------------------------------------------------------------------


@case
def gateway_with_workload_identity() -> None:
    """gateway mode, workload identity on, every optional object on"""
    objects = render(CHART, GATEWAY_WI_ON)
    validate(objects, [min_kube_version(CHART), latest_version()], "gateway, WI on")
    by_kind = kinds(objects)
    for kind in ["Deployment", "Service", "ServiceAccount", "Secret", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]:
        check(f"renders a {kind}", len(by_kind.get(kind, [])) == 1, f"rendered {sorted(by_kind)}")
    check("no ConfigMap: with apps the config (it holds key hashes) is in the Secret", "ConfigMap" not in by_kind, f"rendered {sorted(by_kind)}")

    sa = one(objects, "ServiceAccount")
    annotations = sa["metadata"].get("annotations", {})
    check("ServiceAccount annotated with the client id", annotations.get(WI_CLIENT_ID) == CLIENT_ID, str(annotations))
    check("ServiceAccount keeps user annotations", annotations.get("team") == "ai", str(annotations))

    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    check('pod labelled azure.workload.identity/use: "true"', pod["metadata"]["labels"].get(WI_LABEL) == "true", str(pod["metadata"]["labels"]))
    check("selector does not carry the workload identity label", WI_LABEL not in deployment["spec"]["selector"]["matchLabels"])
    check("pod runs as the ServiceAccount", pod["spec"]["serviceAccountName"] == sa["metadata"]["name"])
    check("no replicas field when the HPA owns them", "replicas" not in deployment["spec"])

    keyless = container(pod["spec"], "keyless")
    check("readiness probe on /readyz", keyless["readinessProbe"]["httpGet"]["path"] == "/readyz")
    check("liveness probe on /healthz", keyless["livenessProbe"]["httpGet"]["path"] == "/healthz")
    check("startup probe on /healthz", keyless["startupProbe"]["httpGet"]["path"] == "/healthz")
    ports = {p["name"]: p["containerPort"] for p in keyless["ports"]}
    check("probes on the proxy port by default", {keyless[k]["httpGet"]["port"] for k in ("startupProbe", "livenessProbe", "readinessProbe")} == {"http"})
    check(f"container ports http 8787 and admin {ADMIN_PORT}", ports == {"http": 8787, "admin": ADMIN_PORT}, str(ports))
    check("listens on all interfaces, port 8787", arg_value(keyless["args"], "--listen") == "0.0.0.0:8787", str(keyless["args"]))
    check("admin listener flag --admin-listen", arg_value(keyless["args"], "--admin-listen") == f"0.0.0.0:{ADMIN_PORT}", str(keyless["args"]))
    check("shutdown grace flag --shutdown-grace", arg_value(keyless["args"], "--shutdown-grace") == "1m30s", str(keyless["args"]))
    check("resources set", bool(keyless.get("resources", {}).get("requests")) and bool(keyless["resources"].get("limits")))

    sc = keyless["securityContext"]
    check("securityContext.runAsNonRoot", sc.get("runAsNonRoot") is True, str(sc))
    check("securityContext.readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True, str(sc))
    check("securityContext drops ALL capabilities", sc.get("capabilities", {}).get("drop") == ["ALL"], str(sc))
    check("securityContext.allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False, str(sc))
    check("pod securityContext.runAsNonRoot", pod["spec"]["securityContext"].get("runAsNonRoot") is True)

    grace = pod["spec"]["terminationGracePeriodSeconds"]
    sleep = keyless["lifecycle"]["preStop"]["sleep"]["seconds"]
    check("terminationGracePeriodSeconds computed: preStop sleep + 1m30s shutdown grace + 5", grace == sleep + 90 + 5, f"{grace} vs {sleep} + 90 + 5")

    secret = one(objects, "Secret")
    text, holder = config_file(objects)
    check("config.toml is in the Secret", holder == "Secret" and "config.toml" in secret.get("stringData", {}), holder)
    toml = tomllib.loads(text)
    check("config.toml: endpoint", toml.get("endpoint") == ENDPOINT, str(toml))
    check("config.toml: credential defaults to workload-identity", toml.get("credential") == "workload-identity", str(toml))
    check("config.toml: [models] table", toml.get("models") == {"gpt-4o-mini": "prod-4o-mini", "gpt-4.1": "prod-41"}, str(toml))
    check("config.toml: max_body_bytes is an integer", toml.get("max_body_bytes") == 33554432 and isinstance(toml["max_body_bytes"], int), str(toml))
    unknown = set(toml) - keyless_config_keys()
    check("config.toml: only keys keyless knows (src/config.rs KNOWN_KEYS)", not unknown, f"unknown: {sorted(unknown)}")
    check(
        "config.toml: [[apps]] from gateway.apps, key hashes included",
        toml.get("apps") == [
            {"name": "billing", "key_sha256": HASH_A, "models": ["gpt-4o-mini"], "rpm": 60, "tpm": 100000},
            {"name": "search", "key_sha256": HASH_B},
        ],
        str(toml.get("apps")),
    )
    check("config.toml: [limits] backend = \"redis\" with a Redis URL", toml.get("limits") == {"backend": "redis"}, str(toml.get("limits")))
    check("config.toml: never the Redis URL", "redis://" not in text and "s3cret-pw" not in text, text)
    check("apps: no --allow-unauthenticated", "--allow-unauthenticated" not in keyless["args"], str(keyless["args"]))
    mounts = {m["mountPath"]: m for m in keyless["volumeMounts"]}
    check("config file mounted read-only where --config points", mounts.get("/etc/keyless/config.toml", {}).get("readOnly") is True and "--config=/etc/keyless/config.toml" in keyless["args"], str(mounts))
    check("pod rolls on config change (checksum annotation)", "checksum/config" in pod["metadata"].get("annotations", {}))

    env = env_of(keyless)
    check(
        "KEYLESS_REDIS_URL from the chart's Secret, not a plain value",
        env.get("KEYLESS_REDIS_URL", {}).get("valueFrom") == {"secretKeyRef": {"name": secret["metadata"]["name"], "key": "redis-url"}} and "value" not in env.get("KEYLESS_REDIS_URL", {}),
        str(env.get("KEYLESS_REDIS_URL")),
    )
    check("the Secret holds the Redis URL", secret.get("stringData", {}).get("redis-url") == REDIS_URL)
    check("the Redis password appears in the Secret only", all("s3cret-pw" not in yaml.safe_dump(o) for o in objects if o["kind"] != "Secret"))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    check("CA bundle mounted read-only and passed as --ca-file", mounts.get("/etc/keyless/ca", {}).get("readOnly") is True and arg_value(keyless["args"], "--ca-file") == "/etc/keyless/ca/ca.crt", f"{mounts} {keyless['args']}")
    check("CA bundle volume references the existing ConfigMap", volumes.get("keyless-ca", {}).get("configMap") == {"name": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}, str(volumes.get("keyless-ca")))
    check("config volume is the Secret's config.toml", volumes.get("keyless-config", {}).get("secret") == {"secretName": secret["metadata"]["name"], "items": [{"key": "config.toml", "path": "config.toml"}]}, str(volumes))

    service = one(objects, "Service")
    check("Service targets the http port", any(p["name"] == "http" and p["targetPort"] == "http" and p["port"] == 8787 for p in service["spec"]["ports"]), str(service["spec"]["ports"]))
    check("Service exposes the admin port", any(p["name"] == "admin" and p["targetPort"] == "admin" and p["port"] == ADMIN_PORT for p in service["spec"]["ports"]), str(service["spec"]["ports"]))
    check("Service selects the Deployment's pods", service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"])

    pdb = one(objects, "PodDisruptionBudget")
    check("PDB selects the pods", pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"])
    hpa = one(objects, "HorizontalPodAutoscaler")
    check("HPA scales the Deployment", hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"])
    check("HPA has CPU and memory targets", {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"})
    policy = one(objects, "NetworkPolicy")
    check("NetworkPolicy restricts ingress and egress", policy["spec"]["policyTypes"] == ["Ingress", "Egress"], str(policy["spec"]["policyTypes"]))
    ingress = {p["port"]: rule for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    check("NetworkPolicy admits the proxy and metrics ports", list(ingress) == ["http", "admin"], str(list(ingress)))
    check("NetworkPolicy admits only networkPolicy.metricsFrom to the admin port", ingress.get("admin", {}).get("from") == GATEWAY_WI_ON["networkPolicy"]["metricsFrom"], str(ingress.get("admin")))

    keyless_accepts(objects, "gateway, WI on, apps and Redis")
    text = notes(CHART, GATEWAY_WI_ON)
    check("NOTES give the in-cluster base URL", "http://kl-keyless.ai.svc:8787/v1" in text, text)
    check("NOTES: clients use their app's key", "app's key" in text and "billing, search" in text, text)


@case
def gateway_without_workload_identity() -> None:
    """gateway mode, workload identity off, chart defaults otherwise"""
    objects = render(CHART, GATEWAY_WI_OFF)
    validate(objects, [min_kube_version(CHART), latest_version()], "gateway, WI off")
    by_kind = kinds(objects)
    check("renders Deployment, Service, ServiceAccount, ConfigMap only", sorted(by_kind) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"], str(sorted(by_kind)))
    sa = one(objects, "ServiceAccount")
    annotations = sa["metadata"].get("annotations") or {}
    check("ServiceAccount has no workload identity annotation", not any(k.startswith("azure.workload.identity/") for k in annotations), str(annotations))
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]
    check("pod has no workload identity label", WI_LABEL not in pod["metadata"]["labels"], str(pod["metadata"]["labels"]))
    check("replicas set (no HPA)", deployment["spec"].get("replicas") == 2)
    keyless = container(pod["spec"], "keyless")
    check("probes still on /healthz and /readyz", keyless["livenessProbe"]["httpGet"]["path"] == "/healthz" and keyless["readinessProbe"]["httpGet"]["path"] == "/readyz")
    check("admin listener on by default: port and flag", [p["name"] for p in keyless["ports"]] == ["http", "admin"] and arg_value(keyless["args"], "--admin-listen") == f"0.0.0.0:{ADMIN_PORT}", str(keyless["args"]))
    check("shutdown grace 30s by default, passed explicitly", arg_value(keyless["args"], "--shutdown-grace") == "30s", str(keyless["args"]))
    check("terminationGracePeriodSeconds 40 by default (5 s sleep + 30 s grace + 5)", pod["spec"]["terminationGracePeriodSeconds"] == 40, str(pod["spec"]["terminationGracePeriodSeconds"]))
    check("no scrape annotations by default", not any(k.startswith("prometheus.io/") for k in pod["metadata"].get("annotations", {})))
    check("allowUnauthenticated, no apps: --allow-unauthenticated passed", "--allow-unauthenticated" in keyless["args"], str(keyless["args"]))
    check("no Redis by default", "KEYLESS_REDIS_URL" not in env_of(keyless))
    toml = tomllib.loads(one(objects, "ConfigMap")["data"]["config.toml"])
    check("config.toml keeps the chosen credential", toml.get("credential") == "managed-identity", str(toml))
    check("config.toml leaves empty values out", set(toml) == {"endpoint", "credential", "log_format"}, str(toml))
    keyless_accepts(objects, "open gateway")
    text = notes(CHART, GATEWAY_WI_OFF)
    check("NOTES warn when no NetworkPolicy guards the gateway", "networkPolicy.enabled=true" in text, text)


@case
def traces_over_otlp() -> None:
    """otel.endpoint: the OTEL_* variables keyless reads; none by default"""
    values = deep_merge(GATEWAY_WI_OFF, {"otel": {"endpoint": "http://otel-collector.observability:4318"}})
    objects = render(CHART, values)
    keyless = container(one(objects, "Deployment")["spec"]["template"]["spec"], "keyless")
    env = env_of(keyless)
    check("OTEL_EXPORTER_OTLP_ENDPOINT from otel.endpoint", env.get("OTEL_EXPORTER_OTLP_ENDPOINT", {}).get("value") == "http://otel-collector.observability:4318", str(env))
    check("OTEL_EXPORTER_OTLP_PROTOCOL http/protobuf by default", env.get("OTEL_EXPORTER_OTLP_PROTOCOL", {}).get("value") == "http/protobuf", str(env))
    check("OTEL_SERVICE_NAME the release's name by default", env.get("OTEL_SERVICE_NAME", {}).get("value") == "kl", str(env))
    keyless_accepts(objects, "gateway with traces")
    grpc = render(CHART, deep_merge(values, {"otel": {"protocol": "grpc", "serviceName": "gw"}}))
    env = env_of(container(one(grpc, "Deployment")["spec"]["template"]["spec"], "keyless"))
    check("otel.protocol grpc and otel.serviceName passed on", env["OTEL_EXPORTER_OTLP_PROTOCOL"]["value"] == "grpc" and env["OTEL_SERVICE_NAME"]["value"] == "gw", str(env))
    plain = render(CHART, GATEWAY_WI_OFF)
    env = env_of(container(one(plain, "Deployment")["spec"]["template"]["spec"], "keyless"))
    check("no OTEL_* variables by default", not any(k.startswith("OTEL_") for k in env), str(env))
    expect_render_error(deep_merge(values, {"otel": {"protocol": "http/json"}}), "protocol", "otel.protocol outside the two keyless speaks")


@case
def gateway_rejects_bad_values() -> None:
    """required values and the values schema"""
    expect_render_error({"workloadIdentity": {"enabled": False}}, "config.endpoint is required", "missing endpoint is an error")
    expect_render_error({"config": {"endpoint": ENDPOINT}}, "workloadIdentity.clientId is required", "workload identity without a client id is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"listn": "x"}}), "listn", "unknown config key rejected by values.schema.json")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"credential": "magic"}}), "credential", "unknown credential rejected by values.schema.json")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"mode": "both"}), "mode", "unknown mode rejected by values.schema.json")


@case
def gateway_app_keys_and_the_open_gateway() -> None:
    """gateway: app keys from values or an existing Secret, or an explicit open gateway; nothing else renders"""
    base = {"config": {"endpoint": ENDPOINT}, "workloadIdentity": {"enabled": False}}
    expect_render_error(base, "define gateway.apps", "no apps and no gateway.allowUnauthenticated: refused")
    expect_render_error(base, "gateway.allowUnauthenticated=true", "the refusal names the override")
    apps = lambda *a: deep_merge(base, {"gateway": {"apps": list(a)}})  # noqa: E731
    expect_render_error(apps({"name": "billing"}), "gateway.apps[0] (billing): no key hash", "an app without a key hash is an error")
    expect_render_error(apps({"name": "billing", "keySha256": HASH_A.upper()}), "keySha256", "an uppercase hash rejected by values.schema.json")
    expect_render_error(apps({"name": "billing", "keySha256": "sk-the-key-itself"}), "keySha256", "a key instead of its hash rejected by values.schema.json")
    expect_render_error(apps({"name": "billing", "keySha256": HASH_A, "key": "x"}), "key", "an unknown app field rejected by values.schema.json")
    expect_render_error(apps({"name": "", "keySha256": HASH_A}), "name", "an empty app name rejected by values.schema.json")
    expect_render_error(apps({"name": "billing", "keySha256": HASH_A, "rpm": 0}), "rpm", "rpm 0 rejected by values.schema.json")
    expect_render_error(apps({"name": "billing", "keySha256": HASH_A, "models": []}), "models", "an empty models list (none? any?) rejected by values.schema.json")
    with_secret = deep_merge(base, {"gateway": {"apps": [{"name": "billing"}], "appKeys": {"existingSecret": "keyless-app-keys"}}})
    expect_render_error(with_secret, 'gateway.appKeys.existingSecret "keyless-app-keys": no such Secret in namespace "ai"', "an existing Secret Helm cannot read is an error that names it")
    expect_render_error(with_secret, "helm template", "the error says why helm template cannot read it")
    expect_render_error(deep_merge(with_secret, {"gateway": {"apps": [{"name": "billing", "keySha256": HASH_A}]}}), "keySha256 and gateway.appKeys.existingSecret both", "a hash in both places is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"appKeys": {"existingSecret": "x"}}), "appKeys was replaced", "the old appKeys value is an error that points to its successor")

    expect_render_error(apps({"name": "odd name", "keySha256": HASH_A}), "name", "an app name keyless would refuse (a space) rejected by values.schema.json")
    expect_render_error(apps({"name": "n" * 65, "keySha256": HASH_A}), "name", "an app name over 64 characters rejected by values.schema.json")
    odd = "team.a-b_1"
    values = apps({"name": odd, "keySha256": HASH_B, "models": ["gpt-4o", "gpt-4o:2024-08.06"]}, {"name": "b", "keySha256": HASH_A, "tpm": 5000})
    values = deep_merge(values, {"gateway": {"allowUnauthenticated": True}})
    objects = render(CHART, values)
    validate(objects, [min_kube_version(CHART), latest_version()], "gateway with apps")
    text, holder = config_file(objects)
    toml = tomllib.loads(text)
    check("apps: config.toml in a Secret", holder == "Secret", holder)
    check(
        "apps: names and models with dots, dashes and colons survive TOML; absent fields left out",
        toml.get("apps") == [{"name": odd, "key_sha256": HASH_B, "models": ["gpt-4o", "gpt-4o:2024-08.06"]}, {"name": "b", "key_sha256": HASH_A, "tpm": 5000}],
        f"{toml.get('apps')}\n{text}",
    )
    check("apps: [[apps]] tables, as keyless's docs write them", text.count("[[apps]]") == 2, text)
    keyless_accepts(objects, "gateway with apps")
    keyless = container(one(objects, "Deployment")["spec"]["template"]["spec"], "keyless")
    check("apps and allowUnauthenticated: the flag is not passed (app keys guard the gateway)", "--allow-unauthenticated" not in keyless["args"], str(keyless["args"]))
    check("apps: no Redis, so the Secret holds only config.toml", set(one(objects, "Secret")["stringData"]) == {"config.toml"})
    check("apps: the pod rolls when an app changes", one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != one(render(CHART, deep_merge(values, {"gateway": {"apps": [{"name": "b", "keySha256": HASH_A, "tpm": 6000}]}})), "Deployment")["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    open_gateway = render(CHART, GATEWAY_WI_OFF)
    text, holder = config_file(open_gateway)
    check("open gateway: config.toml stays in the ConfigMap, no Secret", holder == "ConfigMap" and "Secret" not in kinds(open_gateway), holder)
    check("open gateway: no [[apps]]", "apps" not in tomllib.loads(text), text)
    check("open gateway: NOTES say any API key works", "any API key" in notes(CHART, GATEWAY_WI_OFF))


LOOKUP_LINE = '{{- lookup "v1" "Secret" .Release.Namespace .Values.gateway.appKeys.existingSecret | toJson }}'


def chart_with_secret(tmp: Path, data: dict[str, str]) -> Path:
    """A copy of the chart whose Secret lookup answers `data` (entry -> plain text), as a
    cluster holding that Secret would: offline rendering has no cluster to ask."""
    copy = tmp / "keyless"
    shutil.copytree(CHART, copy)
    helpers = copy / "templates" / "_helpers.tpl"
    text = helpers.read_text()
    if text.count(LOOKUP_LINE) != 1:
        raise AssertionError("the lookup line of keyless.appKeys.lookup changed: update LOOKUP_LINE")
    entries = " ".join(f"{json.dumps(k)} ({json.dumps(v)} | b64enc)" for k, v in data.items())
    helpers.write_text(text.replace(LOOKUP_LINE, f'{{{{- dict "data" (dict {entries}) | toJson }}}}'))
    return copy


@case
def app_keys_from_an_existing_secret() -> None:
    """gateway.appKeys.existingSecret, with the cluster's answer stood in for"""
    values = deep_merge(GATEWAY_WI_OFF, {"gateway": {"apps": [{"name": "billing", "rpm": 3}, {"name": "search", "secretKey": "search-key"}], "appKeys": {"existingSecret": "keyless-app-keys"}}})
    with tempfile.TemporaryDirectory() as tmp:
        # As `kubectl create secret --from-file` leaves it: with a trailing newline.
        chart = chart_with_secret(Path(tmp) / "a", {"billing": HASH_A + "\n", "search-key": HASH_B, "other": "x"})
        objects = render(chart, values)
        missing = chart_with_secret(Path(tmp) / "b", {"billing": HASH_A})
        not_hex = chart_with_secret(Path(tmp) / "c", {"billing": "sk-the-key-itself", "search-key": HASH_B})
        validate(objects, [min_kube_version(CHART), latest_version()], "gateway, app keys from an existing Secret")
        text, holder = config_file(objects)
        toml = tomllib.loads(text)
        check("existing Secret: each app's hash from its entry (name or secretKey), whitespace trimmed", toml.get("apps") == [{"name": "billing", "key_sha256": HASH_A, "rpm": 3}, {"name": "search", "key_sha256": HASH_B}], str(toml.get("apps")))
        check("existing Secret: config.toml rendered into the chart's Secret", holder == "Secret")
        check("existing Secret: entries no app names stay out", '"x"' not in text, text)
        keyless_accepts(objects, "gateway, app keys from an existing Secret")
        expect_render_error(values, 'Secret "keyless-app-keys" has no entry "search-key"', "an app whose entry is missing is an error that names it", missing)
        expect_render_error(values, "gateway.apps[0] (billing): the key hash must be 64 lowercase hex digits", "an entry that is not a hash is an error", not_hex)


@case
def shared_limits_through_redis() -> None:
    """limits.redisUrl or limits.existingSecret: KEYLESS_REDIS_URL from a Secret, [limits] backend = "redis\""""
    existing = render(CHART, deep_merge(GATEWAY_WI_OFF, {"limits": {"existingSecret": "redis-auth", "existingSecretKey": "url"}, "config": {"limits": {"mode": "queue", "deployments": {"prod": {"rpm": 600}}}}}))
    validate(existing, [min_kube_version(CHART), latest_version()], "gateway, Redis from an existing Secret")
    keyless = container(one(existing, "Deployment")["spec"]["template"]["spec"], "keyless")
    check("existing Secret: KEYLESS_REDIS_URL from it", env_of(keyless).get("KEYLESS_REDIS_URL", {}).get("valueFrom") == {"secretKeyRef": {"name": "redis-auth", "key": "url"}}, str(env_of(keyless)))
    check("existing Secret: the chart renders no Secret", "Secret" not in kinds(existing), str(sorted(kinds(existing))))
    keyless_accepts(existing, "gateway, Redis from an existing Secret")
    toml = tomllib.loads(config_file(existing)[0])
    check("[limits] keeps its other keys and gains backend = \"redis\"", toml.get("limits") == {"mode": "queue", "backend": "redis", "deployments": {"prod": {"rpm": 600}}}, str(toml.get("limits")))

    plain = render(CHART, deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": REDIS_URL}}))
    validate(plain, [min_kube_version(CHART), latest_version()], "gateway, Redis URL in values")
    secret = one(plain, "Secret")
    check("redisUrl: the chart's Secret holds it, and only it", secret.get("stringData") == {"redis-url": REDIS_URL}, str(secret.get("stringData")))
    check("redisUrl: the password is in no other object", all("s3cret-pw" not in yaml.safe_dump(o) for o in plain if o["kind"] != "Secret"))
    check("redisUrl: config.toml stays in the ConfigMap", config_file(plain)[1] == "ConfigMap")
    keyless_accepts(plain, "gateway, Redis URL in values")
    chosen = tomllib.loads(config_file(render(CHART, deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": REDIS_URL}, "config": {"limits": {"backend": "local"}}})))[0])
    check("an explicit config.limits.backend is kept", chosen.get("limits") == {"backend": "local"}, str(chosen))
    check("no Redis: no [limits] table is made up", "limits" not in tomllib.loads(config_file(render(CHART, GATEWAY_WI_OFF))[0]))

    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": REDIS_URL, "existingSecret": "x"}}), "limits: set redisUrl or existingSecret, not both", "redisUrl and existingSecret both is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"limits": {"redis_url": REDIS_URL}}}), "config.limits.redis_url would put the Redis URL", "config.limits.redis_url is refused (it would land in a ConfigMap)")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"limits": {"backend": "redis"}}}), "config.limits.backend redis needs a Redis", "backend redis without a URL is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": "http://redis:6379"}}), "redisUrl", "a URL that is not redis:// or rediss:// rejected by values.schema.json")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"limits": {"redis": "x"}}), "redis", "an unknown limits value rejected by values.schema.json")
    text = notes(CHART, deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": REDIS_URL}}))
    check("NOTES: shared limits and what happens without Redis", "keyless_limits_backend_up" in text and "s3cret-pw" not in text, text)


@case
def chart_values_match_keyless() -> None:
    """the chart's config keys, flags and forthcoming features match keyless (src/config.rs)"""
    with helm.Chart.load(CHART) as chart:
        schema_keys = set(chart.schema["properties"]["config"]["properties"])
        value_keys = set(chart.values["config"])
    known = keyless_config_keys()
    keyless_flag_set = keyless_flags()
    values_text = (CHART / "values.yaml").read_text()
    check("every values.yaml config key is a keyless config key", value_keys <= known, f"unknown: {sorted(value_keys - known)}")
    check("values.schema.json config keys equal values.yaml's", schema_keys == value_keys, f"{sorted(schema_keys ^ value_keys)}")
    chart_keys = set(CHART_SET_KEYS) | set(CHART_WRITTEN_KEYS)
    check(
        "every keyless config key is in values.yaml's config, or one the chart sets from a dedicated value",
        known - value_keys == chart_keys,
        f"missing: {sorted(known - value_keys - chart_keys)}; chart-set keys keyless lacks or config repeats: {sorted(chart_keys - (known - value_keys))}",
    )
    for key, source in CHART_WRITTEN_KEYS.items():
        check(f"chart-written key {key}: values.yaml says it comes from {source}", re.search(rf"^#\s+{key}\s+{re.escape(source)}", values_text, re.M) is not None)
        expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {key: []}}), key, f"config.{key} rejected by values.schema.json (set through {source})")
    with tempfile.TemporaryDirectory() as tmp:
        chart_dir = app_chart(Path(tmp))
        sidecar_pod = one(render(chart_dir, {"keyless": {"shutdownGrace": "20s", "caBundle": {"secret": "corp-ca", "key": "bundle.pem"}}}), "Deployment")["spec"]["template"]["spec"]
        open_sidecar_pod = one(render(chart_dir, {"keyless": {"admin": {"enabled": False}, "sidecar": {"listenAddress": "0.0.0.0", "allowUnauthenticated": True}}}), "Deployment")["spec"]["template"]["spec"]
    sidecar_args = container(sidecar_pod, "keyless", init=True)["args"]
    gateway_args = container(one(render(CHART, GATEWAY_WI_ON), "Deployment")["spec"]["template"]["spec"], "keyless")["args"]
    for key, (flag, source) in CHART_SET_KEYS.items():
        check(f"chart-set key {key}: keyless has its flag {flag}", flag in keyless_flag_set, f"flags: {sorted(keyless_flag_set)}")
        check(f"chart-set key {key}: values.yaml says it comes from {source}", re.search(rf"^#\s+{key}\s+\S", values_text, re.M) is not None)
        for label, args in [("gateway", gateway_args), ("sidecar", sidecar_args)]:
            check(f"chart-set key {key}: the {label} passes {flag}", arg_value(args, flag) is not None, str(args))
        if key != "listen":
            expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {key: "x"}}), key, f"config.{key} rejected by values.schema.json (set through {source})")
    check("sidecar passes the shutdown grace it is given", arg_value(sidecar_args, "--shutdown-grace") == "20s", str(sidecar_args))
    sidecar_volume = {v["name"]: v for v in sidecar_pod.get("volumes", [])}.get("keyless-ca", {})
    check("sidecar: the CA bundle Secret comes with keyless.sidecar.volumes and --ca-file points into it", sidecar_volume.get("secret") == {"secretName": "corp-ca", "items": [{"key": "bundle.pem", "path": "bundle.pem"}]} and arg_value(sidecar_args, "--ca-file") == "/etc/keyless/ca/bundle.pem", f"{sidecar_volume} {sidecar_args}")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"caBundle": {"configMap": "a", "secret": "b"}}), "caBundle: set configMap or secret, not both", "caBundle with both a ConfigMap and a Secret is an error")
    for label, args in [("gateway", gateway_args), ("sidecar", sidecar_args)]:
        used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        check(f"every flag the {label} passes exists in keyless", used <= keyless_flag_set, f"unknown: {sorted(used - keyless_flag_set)}")
    open_sidecar = container(open_sidecar_pod, "keyless", init=True)
    gateway_open = container(one(render(CHART, deep_merge(GATEWAY_WI_OFF, {"limits": {"redisUrl": REDIS_URL}})), "Deployment")["spec"]["template"]["spec"], "keyless")
    for label, c in [("open gateway", gateway_open), ("open sidecar", open_sidecar)]:
        used = {a.split("=", 1)[0] for a in c["args"] if a.startswith("--")}
        check(f"every flag the {label} passes exists in keyless", used <= keyless_flag_set, f"unknown: {sorted(used - keyless_flag_set)}")
    source = "\n".join(path.read_text() for path in sorted(SRC.rglob("*.rs")))
    check("the chart's KEYLESS_REDIS_URL is the variable keyless reads", "KEYLESS_REDIS_URL" in env_of(gateway_open) and 'env = "KEYLESS_REDIS_URL"' in source)


@case
def gateway_admin_probes_and_metrics() -> None:
    """gateway: probes on the admin port, scrape annotations, ServiceMonitor, admin off"""
    values = deep_merge(
        GATEWAY_WI_OFF,
        {
            "probes": {"port": "admin"},
            "admin": {"scrapeAnnotations": True, "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}, "scrapeTimeout": "10s"}},
            "networkPolicy": {"enabled": True},
        },
    )
    objects = render(CHART, values)
    # The ServiceMonitor is a Prometheus Operator CRD, which the Kubernetes schemas do not
    # know: its fields are checked below instead. Every other object is validated strictly.
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    validate([o for o in objects if o["kind"] != "ServiceMonitor"], [min_kube_version(CHART), latest_version()], "gateway, admin probes and metrics")
    pod = one(objects, "Deployment")["spec"]["template"]
    keyless = container(pod["spec"], "keyless")
    check("probes.port admin: every probe on the admin port", {keyless[k]["httpGet"]["port"] for k in ("startupProbe", "livenessProbe", "readinessProbe")} == {"admin"}, str(keyless))
    annotations = pod["metadata"].get("annotations", {})
    check("scrape annotations name the admin port and /metrics", annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == str(ADMIN_PORT) and annotations.get("prometheus.io/path") == "/metrics", str(annotations))
    check("one ServiceMonitor", len(monitors) == 1, str([o["kind"] for o in objects]))
    if monitors:
        monitor = monitors[0]
        service = one(objects, "Service")
        selector = monitor["spec"]["selector"]["matchLabels"]
        check("ServiceMonitor is monitoring.coreos.com/v1", monitor["apiVersion"] == "monitoring.coreos.com/v1")
        check("ServiceMonitor selects the Service", selector.items() <= service["metadata"]["labels"].items() and selector == service["spec"]["selector"], str(selector))
        check("ServiceMonitor scrapes the admin port's /metrics", monitor["spec"]["endpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}], str(monitor["spec"]["endpoints"]))
        check("ServiceMonitor carries the labels Prometheus selects by", monitor["metadata"]["labels"].get("release") == "prom", str(monitor["metadata"]["labels"]))
    policy = one(objects, "NetworkPolicy")
    check("no metricsFrom: the NetworkPolicy admits nobody to the admin port", [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["http"], str(policy["spec"]["ingress"]))
    text = notes(CHART, values)
    check("NOTES warn that the NetworkPolicy keeps Prometheus out", "networkPolicy.metricsFrom" in text, text)

    off = render(CHART, deep_merge(GATEWAY_WI_OFF, {"admin": {"enabled": False}}))
    keyless_off = container(one(off, "Deployment")["spec"]["template"]["spec"], "keyless")
    check("admin off: no admin port, no --admin-listen", [p["name"] for p in keyless_off["ports"]] == ["http"] and arg_value(keyless_off["args"], "--admin-listen") is None, str(keyless_off["args"]))
    check("admin off: the Service has no admin port", [p["name"] for p in one(off, "Service")["spec"]["ports"]] == ["http"])
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"admin": {"enabled": False}, "probes": {"port": "admin"}}), "probes.port admin needs admin.enabled", "probes on a disabled admin port are an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"admin": {"enabled": False, "serviceMonitor": {"enabled": True}}}), "admin.serviceMonitor.enabled needs admin.enabled", "a ServiceMonitor without the admin port is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"probes": {"port": 8788}}), "port", "probes.port other than http or admin rejected by values.schema.json")


@case
def shutdown_grace_and_termination() -> None:
    """terminationGracePeriodSeconds covers the preStop sleep and the shutdown grace"""

    def termination(values: dict[str, Any]) -> tuple[int, str | None]:
        pod = one(render(CHART, deep_merge(GATEWAY_WI_OFF, values)), "Deployment")["spec"]["template"]["spec"]
        return pod["terminationGracePeriodSeconds"], arg_value(container(pod, "keyless")["args"], "--shutdown-grace")

    for grace, seconds in [("45s", 45), ("2m", 120), ("1h", 3600), ("1m30s", 90), ("0s", 0)]:
        period, flag = termination({"shutdownGrace": grace})
        check(f"shutdownGrace {grace}: --shutdown-grace={grace}, terminationGracePeriodSeconds 5 + {seconds} + 5", flag == grace and period == seconds + 10, f"{flag}, {period}")
    period, _ = termination({"shutdownGrace": "30s", "preStopSleepSeconds": 0})
    check("no preStop sleep: terminationGracePeriodSeconds = grace + 5", period == 35, str(period))
    period, _ = termination({"terminationGracePeriodSeconds": 36})
    check("an explicit terminationGracePeriodSeconds above sleep + grace is kept", period == 36, str(period))
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"terminationGracePeriodSeconds": 35}), "terminationGracePeriodSeconds (35) must exceed", "terminationGracePeriodSeconds equal to sleep + grace is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"shutdownGrace": "2m", "terminationGracePeriodSeconds": 60}), "terminationGracePeriodSeconds (60) must exceed", "terminationGracePeriodSeconds below sleep + grace is an error")
    for bad in ["30", "500ms", "1 m", "", "30S"]:
        expect_render_error(deep_merge(GATEWAY_WI_OFF, {"shutdownGrace": bad}), "shutdownGrace", f"shutdownGrace {bad!r} rejected")


@case
def config_round_trips_through_toml() -> None:
    """every kind of config value comes out of the ConfigMap as the TOML keyless expects"""
    config = {
        "endpoint": ENDPOINT,
        "api": "deployments",
        "api_version": "2024-10-21",
        "models": {
            "simple": "dep",
            "gpt-4o": [
                {"endpoint": "https://ptu.openai.azure.com", "deployment": "gpt4o-ptu", "priority": 0},
                {"deployment": "gpt-4o", "priority": 1, "weight": 3, "name": "paygo"},
            ],
            "odd name.with \"quotes\"": "x",
        },
        "max_body_bytes": 33554432,
        "connect_timeout": "250ms",
        "idle_timeout": "2m",
        "retry": {"attempts": 5, "max_wait": "10s"},
        "limits": {"mode": "queue", "queue_timeout": "5s", "deployments": {"dep": {"rpm": 60, "tpm": 1000, "max_concurrent": 2}, "gpt4o.ptu": {"rpm": 6}}},
        "scope": "",
        "deployment": None,
    }
    objects = render(CHART, {"config": config, "workloadIdentity": {"enabled": False}, "gateway": {"allowUnauthenticated": True}})
    text = one(objects, "ConfigMap")["data"]["config.toml"]
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        check("config.toml parses as TOML", False, f"{error}\n{text}")
        return
    expected = {k: v for k, v in config.items() if v not in ("", None)} | {"log_format": "json"}  # the chart's default
    check("config.toml equals the values, empties left out", parsed == expected, f"\n    got:      {parsed}\n    expected: {expected}\n{text}")
    unknown = set(parsed) - keyless_config_keys()
    check("config.toml: only keys keyless knows", not unknown, str(sorted(unknown)))
    # keyless refuses the quoted model name (a name Azure would refuse): the rest it takes,
    # with a name that still needs quoting in TOML.
    accepted = copy.deepcopy(config)
    del accepted["models"]['odd name.with "quotes"']
    accepted["models"]["gpt-4o:2024-08.06"] = "dep"
    # A backend with an endpoint of its own would be dialled (only the main endpoint is
    # simulated): this check stays on loopback.
    del accepted["models"]["gpt-4o"][0]["endpoint"]
    keyless_accepts(render(CHART, {"config": accepted, "workloadIdentity": {"enabled": False}, "gateway": {"allowUnauthenticated": True}}), "every kind of config value keyless accepts")


@case
def sidecar_through_app_chart() -> None:
    """sidecar mode: helm/examples/app-chart includes "keyless.sidecar", WI on and off"""
    with tempfile.TemporaryDirectory() as tmp:
        chart_dir = app_chart(Path(tmp))
        versions = [min_kube_version(chart_dir), latest_version()]
        with_wi = render(chart_dir, {}, release="demo-app")
        without_wi = render(chart_dir, {"keyless": {"workloadIdentity": {"enabled": False}, "config": {"credential": "managed-identity"}}}, release="demo-app")
        open_proxy = render(chart_dir, {"keyless": {"admin": {"enabled": False}, "sidecar": {"listenAddress": "0.0.0.0", "allowUnauthenticated": True}}}, release="demo-app")
        expect_render_error({"keyless": {"admin": {"enabled": False}, "sidecar": {"listenAddress": "0.0.0.0"}}}, "sidecar.allowUnauthenticated=true", "sidecar: a listenAddress that is not loopback needs sidecar.allowUnauthenticated", chart_dir)
        expect_render_error({"keyless": {"gateway": {"apps": [{"name": "a", "keySha256": HASH_A}]}}}, "gateway.apps is for gateway mode", "sidecar: gateway.apps is an error", chart_dir)
        redis_sidecar = render(chart_dir, {"keyless": {"limits": {"existingSecret": "shared-redis", "existingSecretKey": "url"}}}, release="demo-app")
        unprobed = render(chart_dir, {"keyless": {"admin": {"enabled": False}, "sidecar": {"probes": {"enabled": False}}}}, release="demo-app")
        no_readiness = render(chart_dir, {"keyless": {"sidecar": {"probes": {"readiness": None}}}}, release="demo-app")
        expect_render_error({"keyless": {"admin": {"enabled": False}}}, "sidecar.probes.enabled needs admin.enabled", "sidecar: probes on a loopback-only keyless are an error", chart_dir)
        expect_render_error({"keyless": {"sidecar": {"probes": {"port": 8788}}}}, "port", "sidecar: the removed sidecar.probes.port rejected by values.schema.json", chart_dir)
    check("the app chart declares Kubernetes 1.29+ (native sidecars)", min_kube_version(EXAMPLES / "app-chart") >= "1.29")
    for label, objects in [("sidecar, WI on", with_wi), ("sidecar, WI off", without_wi), ("sidecar, admin off, proxy on 0.0.0.0", open_proxy), ("sidecar, no probes", unprobed), ("sidecar, no readiness probe", no_readiness)]:
        validate(objects, versions, label)
        own = [o["kind"] for o in objects if "/charts/keyless/" in o["_source"]]
        check(f"{label}: keyless renders only its ConfigMap in sidecar mode", own == ["ConfigMap"], str(own))

    pod = one(with_wi, "Deployment")["spec"]["template"]
    sidecar = container(pod["spec"], "keyless", init=True)
    check("keyless is an init container with restartPolicy: Always", sidecar.get("restartPolicy") == "Always", str(sidecar))
    check("keyless is not among the regular containers", all(c["name"] != "keyless" for c in pod["spec"]["containers"]))
    check("sidecar listens on loopback only", arg_value(sidecar["args"], "--listen") == "127.0.0.1:8787", str(sidecar["args"]))
    check("sidecar on loopback: no --allow-unauthenticated", "--allow-unauthenticated" not in sidecar["args"], str(sidecar["args"]))
    check("sidecar reads /etc/keyless/config.toml", arg_value(sidecar["args"], "--config") == "/etc/keyless/config.toml", str(sidecar["args"]))
    mount = {m["name"]: m for m in sidecar.get("volumeMounts", [])}.get("keyless-config", {})
    check("sidecar mounts config.toml read-only", mount.get("mountPath") == "/etc/keyless/config.toml" and mount.get("readOnly") is True, str(sidecar.get("volumeMounts")))
    configmap = one(with_wi, "ConfigMap")
    volume = {v["name"]: v for v in pod["spec"].get("volumes", [])}.get("keyless-config", {})
    check("the app pod's keyless-config volume is keyless's ConfigMap", volume.get("configMap", {}).get("name") == configmap["metadata"]["name"], str(pod["spec"].get("volumes")))
    check("the app pod rolls when keyless's config changes", pod["metadata"].get("annotations", {}).get("checksum/keyless-config", "") != "")
    toml = tomllib.loads(configmap["data"]["config.toml"])
    check("sidecar config: endpoint and model mapping", toml.get("endpoint") == ENDPOINT and toml.get("models") == {"gpt-4o-mini": "prod-4o-mini"}, str(toml))
    check("sidecar config: credential defaults to workload-identity", toml.get("credential") == "workload-identity", str(toml))
    check(f"sidecar admin listener on 0.0.0.0:{ADMIN_PORT} by default", arg_value(sidecar["args"], "--admin-listen") == f"0.0.0.0:{ADMIN_PORT}", str(sidecar["args"]))
    check("sidecar passes the 30s shutdown grace", arg_value(sidecar["args"], "--shutdown-grace") == "30s", str(sidecar["args"]))
    check("sidecar declares its admin port as keyless-admin", sidecar.get("ports") == [{"name": "keyless-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}], str(sidecar.get("ports")))
    probes = {k: sidecar.get(k, {}).get("httpGet", {}) for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    check("sidecar probes all go to the admin port", {h.get("port") for h in probes.values()} == {ADMIN_PORT}, str(probes))
    check("sidecar startup probe on /readyz: the app's containers start once keyless is ready", probes["startupProbe"].get("path") == "/readyz", str(probes))
    check("sidecar readiness on /readyz, liveness on /healthz", probes["readinessProbe"].get("path") == "/readyz" and probes["livenessProbe"].get("path") == "/healthz", str(probes))
    startup = sidecar["startupProbe"]
    check("sidecar startup probe waits at least a minute for the first token", startup["periodSeconds"] * startup["failureThreshold"] >= 60, str(startup))
    check("the admin port helper names the sidecar's admin port", "keyless.sidecar.adminPort" in (CHART / "templates" / "_helpers.tpl").read_text())
    sc = sidecar["securityContext"]
    check("sidecar securityContext: non-root, read-only root, no capabilities", sc.get("runAsNonRoot") is True and sc.get("readOnlyRootFilesystem") is True and sc.get("capabilities", {}).get("drop") == ["ALL"], str(sc))
    check("sidecar image tag is the chart's appVersion", sidecar["image"] == "ghcr.io/keyless/keyless:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"], sidecar["image"])
    app = container(pod["spec"], "app")
    base_url = {e["name"]: e.get("value") for e in app["env"]}.get("OPENAI_BASE_URL")
    check("the app's OPENAI_BASE_URL points at the sidecar", base_url == "http://127.0.0.1:8787/v1", str(base_url))
    check('WI on: pod labelled azure.workload.identity/use: "true"', pod["metadata"]["labels"].get(WI_LABEL) == "true", str(pod["metadata"]["labels"]))
    sa = one(with_wi, "ServiceAccount")
    check("WI on: the app's ServiceAccount is annotated", (sa["metadata"].get("annotations") or {}).get(WI_CLIENT_ID) == "00000000-0000-0000-0000-000000000000", str(sa["metadata"]))

    pod_off = one(without_wi, "Deployment")["spec"]["template"]
    sidecar_off = container(pod_off["spec"], "keyless", init=True)
    check("WI off: no pod label", WI_LABEL not in pod_off["metadata"]["labels"], str(pod_off["metadata"]["labels"]))
    check("WI off: no ServiceAccount annotation", not (one(without_wi, "ServiceAccount")["metadata"].get("annotations") or {}))
    toml_off = tomllib.loads(one(without_wi, "ConfigMap")["data"]["config.toml"])
    check("WI off: the chosen credential is configured", toml_off.get("credential") == "managed-identity", str(toml_off))
    check("WI off: still a native sidecar", sidecar_off.get("restartPolicy") == "Always")

    open_sidecar = container(one(open_proxy, "Deployment")["spec"]["template"]["spec"], "keyless", init=True)
    check("admin off, proxy on 0.0.0.0: probes go to the proxy port", {open_sidecar.get(k, {}).get("httpGet", {}).get("port") for k in ("startupProbe", "livenessProbe", "readinessProbe")} == {8787}, str(open_sidecar))
    check("admin off: no --admin-listen, no ports", arg_value(open_sidecar["args"], "--admin-listen") is None and "ports" not in open_sidecar, str(open_sidecar))
    check("proxy on 0.0.0.0 with sidecar.allowUnauthenticated: --allow-unauthenticated passed", "--allow-unauthenticated" in open_sidecar["args"], str(open_sidecar["args"]))
    validate(redis_sidecar, versions, "sidecar, shared limits")
    keyless_accepts(with_wi, "sidecar on loopback", init=True)
    keyless_accepts(open_proxy, "sidecar on 0.0.0.0, allowUnauthenticated", init=True)
    keyless_accepts(redis_sidecar, "sidecar, shared limits", init=True)
    redis_keyless = container(one(redis_sidecar, "Deployment")["spec"]["template"]["spec"], "keyless", init=True)
    check("sidecar with limits.existingSecret: KEYLESS_REDIS_URL from that Secret", env_of(redis_keyless).get("KEYLESS_REDIS_URL", {}).get("valueFrom") == {"secretKeyRef": {"name": "shared-redis", "key": "url"}}, str(env_of(redis_keyless)))
    check("sidecar with an existing Redis Secret: keyless renders no Secret of its own", [o["kind"] for o in redis_sidecar if "/charts/keyless/" in o["_source"]] == ["ConfigMap"])
    redis_toml = tomllib.loads(one(redis_sidecar, "ConfigMap")["data"]["config.toml"])
    check("sidecar with shared limits: [limits] backend = \"redis\"", redis_toml.get("limits") == {"backend": "redis"}, str(redis_toml))
    plain_sidecar = container(one(unprobed, "Deployment")["spec"]["template"]["spec"], "keyless", init=True)
    check("admin and probes off: no probes, no admin listener", not any(k in plain_sidecar for k in ("startupProbe", "livenessProbe", "readinessProbe")) and arg_value(plain_sidecar["args"], "--admin-listen") is None, str(plain_sidecar))
    lean = container(one(no_readiness, "Deployment")["spec"]["template"]["spec"], "keyless", init=True)
    check("readiness: null leaves only the readiness probe out", "readinessProbe" not in lean and "startupProbe" in lean and "livenessProbe" in lean, str(lean))


@case
def sidecar_mode_alone_renders_only_config() -> None:
    """the keyless chart installed with mode: sidecar renders only its ConfigMap"""
    objects = render(CHART, {"mode": "sidecar", "config": {"endpoint": ENDPOINT}, "workloadIdentity": {"clientId": CLIENT_ID}})
    check("only the ConfigMap", [o["kind"] for o in objects] == ["ConfigMap"], str([o["kind"] for o in objects]))
    check("NOTES explain how to include the sidecar", 'include "keyless.sidecar"' in notes(CHART, {"mode": "sidecar", "config": {"endpoint": ENDPOINT}, "workloadIdentity": {"enabled": False}}))


@case
def plain_sidecar_manifest() -> None:
    """helm/examples/sidecar-pod.yaml: valid, and the same keyless container the chart renders"""
    objects = [o for o in yaml.safe_load_all((EXAMPLES / "sidecar-pod.yaml").read_text()) if o]
    for o in objects:
        o["_source"] = "helm/examples/sidecar-pod.yaml"
    validate(objects, ["1.29", latest_version()], "plain sidecar manifest")
    pod = one(objects, "Deployment")["spec"]["template"]
    plain = container(pod["spec"], "keyless", init=True)
    check("init container with restartPolicy: Always", plain.get("restartPolicy") == "Always")
    check('pod labelled azure.workload.identity/use: "true"', pod["metadata"]["labels"].get(WI_LABEL) == "true")
    check("ServiceAccount annotated", WI_CLIENT_ID in one(objects, "ServiceAccount")["metadata"].get("annotations", {}))
    with tempfile.TemporaryDirectory() as tmp:
        rendered_objects = render(app_chart(Path(tmp)), {}, release="demo-app")
    rendered_pod = one(rendered_objects, "Deployment")["spec"]["template"]
    rendered = container(rendered_pod["spec"], "keyless", init=True)
    for field in ["image", "restartPolicy", "securityContext", "resources", "env", "ports", "startupProbe", "livenessProbe", "readinessProbe", "volumeMounts"]:
        check(f"plain manifest's keyless {field} matches the chart's", plain.get(field) == rendered.get(field), f"\n    plain:    {plain.get(field)}\n    rendered: {rendered.get(field)}")
    check("plain manifest's keyless args match the chart's", plain["args"] == rendered["args"], f"\n    plain:    {plain['args']}\n    rendered: {rendered['args']}")
    check("plain manifest's volumes match the chart's", pod["spec"].get("volumes") == rendered_pod["spec"].get("volumes"), f"\n    plain:    {pod['spec'].get('volumes')}\n    rendered: {rendered_pod['spec'].get('volumes')}")
    plain_toml = tomllib.loads(one(objects, "ConfigMap")["data"]["config.toml"])
    rendered_toml = tomllib.loads(one(rendered_objects, "ConfigMap")["data"]["config.toml"])
    check("plain manifest's config.toml says what the chart's does", plain_toml == rendered_toml, f"\n    plain:    {plain_toml}\n    rendered: {rendered_toml}")


@case
def helm_lint() -> None:
    """helm lint --strict on the chart and the app chart"""
    report = helm.lint(CHART, GATEWAY_WI_ON, strict=True, kube_version="v" + min_kube_version(CHART) + ".0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report.get("errors") or []]
    check("chart lints clean (strict, gateway values)", not problems, str(problems))
    with tempfile.TemporaryDirectory() as tmp:
        chart_dir = app_chart(Path(tmp))
        report = helm.lint(chart_dir, None, strict=True, with_subcharts=True, kube_version="v" + min_kube_version(chart_dir) + ".0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report.get("errors") or []]
    check("app chart lints clean (strict, with subcharts)", not problems, str(problems))


def main() -> int:
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()}), kubernetes-validate {kubernetes_validate.__version__}")
    for run in CASES:
        run()
    print(f"\n{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
