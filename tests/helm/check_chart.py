#!/usr/bin/env python3
"""Checks the keyless Helm chart (helm/keyless) and its examples (helm/examples).

Renders the chart with helm-python-sdk (Helm's own Go SDK, no helm binary) as a shared
gateway and, through helm/examples/app-chart, as a native sidecar, each with AKS workload
identity on and off; validates every rendered object against the Kubernetes JSON schemas
(kubernetes-validate, strict: unknown fields fail) for the oldest Kubernetes the chart
declares and the newest the validator knows; and asserts what issue 6 asks of the chart.

    python3 -m venv tests/helm/.venv
    tests/helm/.venv/bin/pip install -r tests/helm/requirements.txt
    tests/helm/.venv/bin/python tests/helm/check_chart.py

Exits non-zero if any check fails; the last line is `N passed, N failed`.
"""

from __future__ import annotations

import copy
import re
import shutil
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
# Flags the chart passes only when asked (admin.enabled, shutdownGrace), for keyless features
# that are coming; once keyless has them, this check says so.
FORTHCOMING_FLAGS = {"--admin-listen", "--shutdown-grace"}

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


def arg_value(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(flag + "="):
            return a[len(flag) + 1 :]
    return None


def expect_render_error(values: dict[str, Any], needle: str, label: str) -> None:
    try:
        render(CHART, values)
    except helm.HelmError as error:
        check(label, needle in str(error), f"error does not mention {needle!r}: {error}")
    else:
        check(label, False, "rendered without error")


# --- what keyless accepts (read from its source, so the chart cannot drift from it) ---------


def keyless_config_keys() -> set[str]:
    text = CONFIG_RS.read_text()
    match = re.search(r"const KNOWN_KEYS: &\[&str\] = &\[(.*?)\];", text, re.S)
    if not match:
        raise AssertionError(f"{CONFIG_RS}: KNOWN_KEYS not found")
    return set(re.findall(r'"([a-z_]+)"', match[1]))


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
    "appKeys": {"existingSecret": "keyless-app-keys"},
    "shutdownGrace": "30s",
}

GATEWAY_WI_OFF = {
    "config": {"endpoint": ENDPOINT, "credential": "managed-identity"},
    "workloadIdentity": {"enabled": False},
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
    for kind in ["Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]:
        check(f"renders a {kind}", len(by_kind.get(kind, [])) == 1, f"rendered {sorted(by_kind)}")

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
    check("container ports http 8787 and admin 9090", ports == {"http": 8787, "admin": 9090}, str(ports))
    check("listens on all interfaces, port 8787", arg_value(keyless["args"], "--listen") == "0.0.0.0:8787", str(keyless["args"]))
    check("admin listener flag (forthcoming --admin-listen)", arg_value(keyless["args"], "--admin-listen") == "0.0.0.0:9090", str(keyless["args"]))
    check("shutdown grace flag (forthcoming --shutdown-grace)", arg_value(keyless["args"], "--shutdown-grace") == "30s", str(keyless["args"]))
    check("resources set", bool(keyless.get("resources", {}).get("requests")) and bool(keyless["resources"].get("limits")))

    sc = keyless["securityContext"]
    check("securityContext.runAsNonRoot", sc.get("runAsNonRoot") is True, str(sc))
    check("securityContext.readOnlyRootFilesystem", sc.get("readOnlyRootFilesystem") is True, str(sc))
    check("securityContext drops ALL capabilities", sc.get("capabilities", {}).get("drop") == ["ALL"], str(sc))
    check("securityContext.allowPrivilegeEscalation false", sc.get("allowPrivilegeEscalation") is False, str(sc))
    check("pod securityContext.runAsNonRoot", pod["spec"]["securityContext"].get("runAsNonRoot") is True)

    grace = pod["spec"]["terminationGracePeriodSeconds"]
    sleep = keyless["lifecycle"]["preStop"]["sleep"]["seconds"]
    check("terminationGracePeriodSeconds > preStop sleep + 30s shutdown grace", grace > sleep + 30, f"{grace} vs {sleep} + 30")

    configmap = one(objects, "ConfigMap")
    toml = tomllib.loads(configmap["data"]["config.toml"])
    check("config.toml: endpoint", toml.get("endpoint") == ENDPOINT, str(toml))
    check("config.toml: credential defaults to workload-identity", toml.get("credential") == "workload-identity", str(toml))
    check("config.toml: [models] table", toml.get("models") == {"gpt-4o-mini": "prod-4o-mini", "gpt-4.1": "prod-41"}, str(toml))
    check("config.toml: max_body_bytes is an integer", toml.get("max_body_bytes") == 33554432 and isinstance(toml["max_body_bytes"], int), str(toml))
    unknown = set(toml) - keyless_config_keys()
    check("config.toml: only keys keyless knows (src/config.rs KNOWN_KEYS)", not unknown, f"unknown: {sorted(unknown)}")
    mounts = {m["mountPath"]: m for m in keyless["volumeMounts"]}
    check("config file mounted read-only where --config points", mounts.get("/etc/keyless/config.toml", {}).get("readOnly") is True and "--config=/etc/keyless/config.toml" in keyless["args"], str(mounts))
    check("pod rolls on config change (checksum annotation)", "checksum/config" in pod["metadata"].get("annotations", {}))

    env = {e["name"]: e for e in keyless["env"]}
    check("app keys Secret mounted read-only", mounts.get("/etc/keyless/app-keys", {}).get("readOnly") is True, str(mounts))
    check("app keys file passed as KEYLESS_APP_KEYS_FILE", env.get("KEYLESS_APP_KEYS_FILE", {}).get("value") == "/etc/keyless/app-keys/keys", str(env))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    check("app keys volume references the existing Secret", volumes.get("keyless-app-keys", {}).get("secret", {}).get("secretName") == "keyless-app-keys", str(volumes))
    check("config volume references the ConfigMap", volumes.get("keyless-config", {}).get("configMap", {}).get("name") == configmap["metadata"]["name"], str(volumes))

    service = one(objects, "Service")
    check("Service targets the http port", any(p["name"] == "http" and p["targetPort"] == "http" and p["port"] == 8787 for p in service["spec"]["ports"]), str(service["spec"]["ports"]))
    check("Service selects the Deployment's pods", service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"])

    pdb = one(objects, "PodDisruptionBudget")
    check("PDB selects the pods", pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"])
    hpa = one(objects, "HorizontalPodAutoscaler")
    check("HPA scales the Deployment", hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"])
    check("HPA has CPU and memory targets", {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"})
    policy = one(objects, "NetworkPolicy")
    check("NetworkPolicy restricts ingress and egress", policy["spec"]["policyTypes"] == ["Ingress", "Egress"], str(policy["spec"]["policyTypes"]))
    ingress_ports = [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]]
    check("NetworkPolicy admits the proxy and metrics ports", ingress_ports == ["http", "admin"], str(ingress_ports))

    text = notes(CHART, GATEWAY_WI_ON)
    check("NOTES give the in-cluster base URL", "http://kl-keyless.ai.svc:8787/v1" in text, text)


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
    check("no admin port, no forthcoming flags by default", [p["name"] for p in keyless["ports"]] == ["http"] and not any(a.startswith(("--admin-listen", "--shutdown-grace")) for a in keyless["args"]), str(keyless["args"]))
    check("no app keys by default", "KEYLESS_APP_KEYS_FILE" not in {e["name"] for e in keyless["env"]})
    toml = tomllib.loads(one(objects, "ConfigMap")["data"]["config.toml"])
    check("config.toml keeps the chosen credential", toml.get("credential") == "managed-identity", str(toml))
    check("config.toml leaves empty values out", set(toml) == {"endpoint", "credential", "log_format"}, str(toml))
    text = notes(CHART, GATEWAY_WI_OFF)
    check("NOTES warn when no NetworkPolicy guards the gateway", "networkPolicy.enabled=true" in text, text)


@case
def gateway_rejects_bad_values() -> None:
    """required values and the values schema"""
    expect_render_error({"workloadIdentity": {"enabled": False}}, "config.endpoint is required", "missing endpoint is an error")
    expect_render_error({"config": {"endpoint": ENDPOINT}}, "workloadIdentity.clientId is required", "workload identity without a client id is an error")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"listn": "x"}}), "listn", "unknown config key rejected by values.schema.json")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"config": {"credential": "magic"}}), "credential", "unknown credential rejected by values.schema.json")
    expect_render_error(deep_merge(GATEWAY_WI_OFF, {"mode": "both"}), "mode", "unknown mode rejected by values.schema.json")


@case
def chart_values_match_keyless() -> None:
    """the chart's config keys and sidecar flags exist in keyless (src/config.rs)"""
    with helm.Chart.load(CHART) as chart:
        schema_keys = set(chart.schema["properties"]["config"]["properties"])
        value_keys = set(chart.values["config"])
    known = keyless_config_keys()
    check("every values.yaml config key is a keyless config key", value_keys <= known, f"unknown: {sorted(value_keys - known)}")
    check("values.schema.json config keys equal values.yaml's", schema_keys == value_keys, f"{sorted(schema_keys ^ value_keys)}")
    check("every keyless config key but listen is in values.yaml", known - value_keys == {"listen"}, f"missing: {sorted(known - value_keys - {'listen'})}")
    flags = keyless_flags() | FORTHCOMING_FLAGS
    with tempfile.TemporaryDirectory() as tmp:
        sidecar_args = container(one(render(app_chart(Path(tmp)), {"keyless": {"shutdownGrace": "20s"}}), "Deployment")["spec"]["template"]["spec"], "keyless", init=True)["args"]
    gateway_args = container(one(render(CHART, GATEWAY_WI_ON), "Deployment")["spec"]["template"]["spec"], "keyless")["args"]
    for label, args in [("gateway", gateway_args), ("sidecar", sidecar_args)]:
        used = {a.split("=", 1)[0] for a in args if a.startswith("--")}
        check(f"every flag the {label} passes exists in keyless (or is a forthcoming one)", used <= flags, f"unknown: {sorted(used - flags)}")
    arrived = FORTHCOMING_FLAGS & keyless_flags()
    check("forthcoming flags still forthcoming (else drop them from FORTHCOMING_FLAGS and the chart's notes)", not arrived, f"now in keyless: {sorted(arrived)}")


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
    objects = render(CHART, {"config": config, "workloadIdentity": {"enabled": False}})
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


@case
def sidecar_through_app_chart() -> None:
    """sidecar mode: helm/examples/app-chart includes "keyless.sidecar", WI on and off"""
    with tempfile.TemporaryDirectory() as tmp:
        chart_dir = app_chart(Path(tmp))
        versions = [min_kube_version(chart_dir), latest_version()]
        with_wi = render(chart_dir, {}, release="demo-app")
        without_wi = render(chart_dir, {"keyless": {"workloadIdentity": {"enabled": False}, "config": {"credential": "managed-identity"}}}, release="demo-app")
        probed = render(chart_dir, {"keyless": {"sidecar": {"listenAddress": "0.0.0.0", "probes": {"enabled": True}}}}, release="demo-app")
    check("the app chart declares Kubernetes 1.29+ (native sidecars)", min_kube_version(EXAMPLES / "app-chart") >= "1.29")
    for label, objects in [("sidecar, WI on", with_wi), ("sidecar, WI off", without_wi), ("sidecar, probes on", probed)]:
        validate(objects, versions, label)
        own = [o["kind"] for o in objects if "/charts/keyless/" in o["_source"]]
        check(f"{label}: keyless renders only its ConfigMap in sidecar mode", own == ["ConfigMap"], str(own))

    pod = one(with_wi, "Deployment")["spec"]["template"]
    sidecar = container(pod["spec"], "keyless", init=True)
    check("keyless is an init container with restartPolicy: Always", sidecar.get("restartPolicy") == "Always", str(sidecar))
    check("keyless is not among the regular containers", all(c["name"] != "keyless" for c in pod["spec"]["containers"]))
    check("sidecar listens on loopback only", arg_value(sidecar["args"], "--listen") == "127.0.0.1:8787", str(sidecar["args"]))
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
    check("sidecar has no probes on a loopback listener", not any(k in sidecar for k in ("startupProbe", "livenessProbe", "readinessProbe")))
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

    sidecar_probed = container(one(probed, "Deployment")["spec"]["template"]["spec"], "keyless", init=True)
    check("probes on: startup probe on /healthz gates the app's start", sidecar_probed.get("startupProbe", {}).get("httpGet", {}).get("path") == "/healthz", str(sidecar_probed))
    check("probes on: readiness on /readyz", sidecar_probed.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz")


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
    for field in ["image", "restartPolicy", "securityContext", "resources", "env", "volumeMounts"]:
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
