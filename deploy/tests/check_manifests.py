#!/usr/bin/env python3
"""Offline checks of iolane's Kubernetes manifests.

For every overlay under deploy/overlays:
  1. render it with `kubectl kustomize`;
  2. validate every object against the Kubernetes 1.34 OpenAPI schemas, strictly (unknown
     fields are errors). Only the kinds in CRD_KINDS are skipped, by name: they come from
     CRDs (the Prometheus Operator's PodMonitor) that the core schemas do not describe;
  3. check the invariants below, which a schema cannot express.

Then it runs its own self-test: each invariant is fed a broken copy of the default
overlay and must report it, so a check that can no longer fail is caught.

Exit status 0 only if everything passed. The last line is `N passed, M failed`.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

try:
    import kubernetes_validate
except ImportError:  # validate.sh installs it; say so rather than print a traceback
    sys.exit("check_manifests: the Python package kubernetes-validate is missing; run deploy/validate.sh")

KUBERNETES_VERSION = "1.34.0"
DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
KUBECTL = "/usr/bin/kubectl"

DRIVER_NAME = "csi.iolane.dev"
NAMESPACE = "iolane"
NODE_DAEMONSET = "iolane-node"
CONTROLLER_DEPLOYMENT = "iolane-controller"
DRIVER_CONTAINER = "iolane"
KUBELET_ROOT = "/var/lib/kubelet"
KUBELET_DIRS = (f"{KUBELET_ROOT}/pods", f"{KUBELET_ROOT}/plugins")
PLUGIN_DIR = f"{KUBELET_ROOT}/plugins/{DRIVER_NAME}"

# Kinds defined by CRDs, skipped by schema validation (and only these).
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}

# csi-provisioner in distributed mode: every one of these, exactly as written.
PROVISIONER_FLAGS = (
    "--node-deployment",
    "--enable-capacity",
    "--capacity-ownerref-level=0",
    "--extra-create-metadata",
    "--strict-topology",
    "--immediate-topology=false",
)
# ... and the downward-API variables it needs, with their fields.
PROVISIONER_ENV = {
    "NODE_NAME": "spec.nodeName",
    "NAMESPACE": "metadata.namespace",
    "POD_NAME": "metadata.name",
}

WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job", "Pod"}

# Keys of the node config (csi-driver/src/config.rs, iops-controller/src/tier.rs).
CONFIG_TOP_KEYS = {"loop", "device_class", "tiers"}
CONFIG_LOOP_KEYS = {"overprovision_ratio"}
CONFIG_CLASS_KEYS = {
    "name", "devices", "vg", "thin_pool", "chunk_size", "zero", "overprovision_ratio",
    "data_high_watermark", "metadata_high_watermark", "wipe", "pool_size_percent",
}
CONFIG_TIER_KEYS = {"priority", "read_iops", "write_iops", "read_bps", "write_bps", "per_gib"}
BUILTIN_TIERS = {"streaming", "batch"}


# ---------------------------------------------------------------------------------------
# The parameter keys, read from the one place the code keeps them.

def rust_keys() -> tuple[set[str], set[str]]:
    """STORAGE_CLASS_KEYS and MUTABLE_KEYS of iops-controller/src/keys.rs, as strings."""
    text = (REPO / "iops-controller/src/keys.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]*)";', text))

    def array(name: str) -> set[str]:
        m = re.search(rf"pub const {name}: \[&str; \d+\] = \[(.*?)\];", text, re.S)
        if not m:
            raise SystemExit(f"check_manifests: {name} not found in iops-controller/src/keys.rs")
        return {consts[n.strip()] for n in m.group(1).split(",") if n.strip()}

    return array("STORAGE_CLASS_KEYS"), array("MUTABLE_KEYS")


STORAGE_CLASS_KEYS, MUTABLE_KEYS = rust_keys()


# ---------------------------------------------------------------------------------------
# Helpers

def render(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def name_of(obj: dict[str, Any]) -> str:
    ns = obj.get("metadata", {}).get("namespace")
    name = obj.get("metadata", {}).get("name", "?")
    return f"{obj.get('kind')}/{ns + '/' if ns else ''}{name}"


def find(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next(
        (o for o in objs if o.get("kind") == kind and o.get("metadata", {}).get("name") == name),
        None,
    )


def pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    if obj.get("kind") == "Pod":
        return obj.get("spec", {})
    if obj.get("kind") in WORKLOAD_KINDS:
        return obj.get("spec", {}).get("template", {}).get("spec", {})
    return None


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_spec(obj) or {}
    for key in ("initContainers", "containers", "ephemeralContainers"):
        yield from spec.get(key) or []


def container(obj: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if obj is None:
        return None
    return next((c for c in containers(obj) if c.get("name") == name), None)


def container_by_image(obj: dict[str, Any] | None, image_part: str) -> dict[str, Any] | None:
    if obj is None:
        return None
    return next((c for c in containers(obj) if image_part in c.get("image", "")), None)


def flag_value(args: list[str], flag: str) -> str | None:
    for a in args:
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def port_number(c: dict[str, Any], port: Any) -> int | None:
    if isinstance(port, int):
        return port
    for p in c.get("ports") or []:
        if p.get("name") == port:
            return p.get("containerPort")
    return None


def image_pinned(image: str) -> str | None:
    """None if the reference names a version tag or a digest; else why not."""
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag"
    tag = last.split(":", 1)[1]
    if tag == "latest":
        return "is tagged latest"
    if not re.fullmatch(r"v?\d+(\.\d+)*([-.+][0-9A-Za-z.-]+)?", tag):
        return f"tag {tag!r} is not a version"
    return None


# ---------------------------------------------------------------------------------------
# Invariants. Each returns a list of problems (empty: the invariant holds).

Check = Callable[[list[dict[str, Any]]], list[str]]
CHECKS: dict[str, Check] = {}


def check(fn: Check) -> Check:
    CHECKS[fn.__name__] = fn
    return fn


@check
def csidriver_fields(objs: list[dict[str, Any]]) -> list[str]:
    d = find(objs, "CSIDriver", DRIVER_NAME)
    if d is None:
        return [f"no CSIDriver {DRIVER_NAME}"]
    spec = d.get("spec", {})
    want = {
        "attachRequired": False,
        "podInfoOnMount": True,
        "storageCapacity": True,
        "volumeLifecycleModes": ["Persistent"],
    }
    problems = [
        f"CSIDriver spec.{k} is {spec.get(k)!r}, want {v!r}"
        for k, v in want.items()
        if spec.get(k) != v
    ]
    if spec.get("fsGroupPolicy") not in ("File", "ReadWriteOnceWithFSType", "None"):
        problems.append(f"CSIDriver spec.fsGroupPolicy is {spec.get('fsGroupPolicy')!r}")
    return problems


@check
def provisioner_flags(objs: list[dict[str, Any]]) -> list[str]:
    ds = find(objs, "DaemonSet", NODE_DAEMONSET)
    c = container_by_image(ds, "/csi-provisioner:")
    if c is None:
        return [f"DaemonSet {NODE_DAEMONSET} has no csi-provisioner container"]
    args = c.get("args") or []
    problems = [f"csi-provisioner lacks {f}" for f in PROVISIONER_FLAGS if f not in args]
    for f in ("--capacity-ownerref-level", "--immediate-topology"):
        values = [a for a in args if a.split("=", 1)[0] == f]
        if len(values) > 1:
            problems.append(f"csi-provisioner sets {f} {len(values)} times")
    if flag_value(args, "--csi-address") != "/csi/csi.sock":
        problems.append("csi-provisioner --csi-address is not /csi/csi.sock")
    env = {e.get("name"): e for e in c.get("env") or []}
    for name, fieldpath in PROVISIONER_ENV.items():
        got = env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if got != fieldpath:
            problems.append(f"csi-provisioner env {name} is not the downward-API field {fieldpath}")
    return problems


@check
def images_pinned(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        for c in containers(o):
            why = image_pinned(c.get("image", ""))
            if why:
                problems.append(f"{name_of(o)} container {c.get('name')}: image {c.get('image')!r} {why}")
    return problems


@check
def resources_everywhere(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    for o in objs:
        for c in containers(o):
            res = c.get("resources") or {}
            for section in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if not (res.get(section) or {}).get(r):
                        problems.append(f"{name_of(o)} container {c.get('name')}: no {section}.{r}")
    return problems


@check
def privileged_only_driver(objs: list[dict[str, Any]]) -> list[str]:
    problems = []
    found = False
    for o in objs:
        spec = pod_spec(o) or {}
        for key in ("hostPID", "hostIPC", "hostNetwork"):
            if spec.get(key):
                problems.append(f"{name_of(o)}: {key} is set")
        for c in containers(o):
            sc = c.get("securityContext") or {}
            is_driver = (
                o.get("kind") == "DaemonSet"
                and o["metadata"].get("name") == NODE_DAEMONSET
                and c.get("name") == DRIVER_CONTAINER
            )
            if sc.get("privileged"):
                if is_driver:
                    found = True
                else:
                    problems.append(f"{name_of(o)} container {c.get('name')} is privileged")
            elif not is_driver and sc.get("allowPrivilegeEscalation") is not False:
                problems.append(
                    f"{name_of(o)} container {c.get('name')}: allowPrivilegeEscalation is not false"
                )
            if not is_driver and (sc.get("capabilities") or {}).get("add"):
                problems.append(f"{name_of(o)} container {c.get('name')} adds capabilities")
    if not found:
        problems.append(f"the driver container of DaemonSet {NODE_DAEMONSET} is not privileged")
    return problems


@check
def kubelet_mounts_bidirectional(objs: list[dict[str, Any]]) -> list[str]:
    ds = find(objs, "DaemonSet", NODE_DAEMONSET)
    c = container(ds, DRIVER_CONTAINER)
    if c is None:
        return [f"DaemonSet {NODE_DAEMONSET} has no container {DRIVER_CONTAINER}"]
    volumes = {v["name"]: v for v in (pod_spec(ds) or {}).get("volumes") or []}
    problems = []
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts") or []}
    for path in KUBELET_DIRS:
        m = mounts.get(path)
        if m is None:
            problems.append(f"driver does not mount {path}")
            continue
        if m.get("mountPropagation") != "Bidirectional":
            problems.append(f"driver mount {path} has propagation {m.get('mountPropagation')!r}")
        host = (volumes.get(m.get("name"), {}).get("hostPath") or {}).get("path")
        if host != path:
            problems.append(f"driver mount {path} is not the host's {path} (hostPath {host!r})")
    # Bidirectional elsewhere is only for the driver (the API refuses it on unprivileged
    # containers anyway; a sidecar has no business propagating mounts).
    for o in objs:
        for other in containers(o):
            if other is c:
                continue
            for m in other.get("volumeMounts") or []:
                if m.get("mountPropagation") == "Bidirectional":
                    problems.append(f"{name_of(o)} container {other.get('name')} mounts {m.get('mountPath')} Bidirectional")
    return problems


@check
def driver_wiring(objs: list[dict[str, Any]]) -> list[str]:
    ds = find(objs, "DaemonSet", NODE_DAEMONSET)
    c = container(ds, DRIVER_CONTAINER)
    if c is None:
        return [f"DaemonSet {NODE_DAEMONSET} has no container {DRIVER_CONTAINER}"]
    spec = pod_spec(ds) or {}
    args = c.get("args") or []
    problems = []
    if args[:1] != ["node"]:
        problems.append("driver does not run `iolane node`")
    if flag_value(args, "--path-root") != KUBELET_ROOT:
        problems.append(f"driver --path-root is not {KUBELET_ROOT}")
    if flag_value(args, "--endpoint") != "unix:///csi/csi.sock":
        problems.append("driver --endpoint is not unix:///csi/csi.sock")
    # The socket directory is the plugin directory kubelet knows.
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    sock = next((m for m in c.get("volumeMounts") or [] if m.get("mountPath") == "/csi"), None)
    host = (volumes.get(sock.get("name"), {}).get("hostPath") or {}).get("path") if sock else None
    if host != PLUGIN_DIR:
        problems.append(f"the socket directory is {host!r}, not {PLUGIN_DIR}")
    reg = container_by_image(ds, "/csi-node-driver-registrar:")
    if reg is None:
        problems.append("no node-driver-registrar container")
    elif flag_value(reg.get("args") or [], "--kubelet-registration-path") != f"{PLUGIN_DIR}/csi.sock":
        problems.append("registrar --kubelet-registration-path is not the driver's socket on the host")
    # --config names a file in a mounted ConfigMap.
    config = flag_value(args, "--config")
    cm_mounts = [
        m for m in c.get("volumeMounts") or []
        if "configMap" in volumes.get(m.get("name"), {})
    ]
    if not config or not any(config.startswith(m["mountPath"].rstrip("/") + "/") for m in cm_mounts):
        problems.append(f"driver --config {config!r} is not a file of a mounted ConfigMap")
    # --metrics-address port is a declared container port named metrics.
    metrics = flag_value(args, "--metrics-address")
    port = int(metrics.rsplit(":", 1)[1]) if metrics and ":" in metrics else None
    if port is None or port_number(c, "metrics") != port:
        problems.append(f"driver --metrics-address {metrics!r} has no matching container port named metrics")
    # The liveness probe asks the livenessprobe sidecar, on the port it serves.
    probe = (c.get("livenessProbe") or {}).get("httpGet") or {}
    lp = container_by_image(ds, "/livenessprobe:")
    health = flag_value((lp or {}).get("args") or [], "--health-port")
    if probe.get("path") != "/healthz":
        problems.append("driver livenessProbe is not an httpGet of /healthz")
    if lp is None or health is None or port_number(c, probe.get("port")) != int(health):
        problems.append("driver livenessProbe port is not the livenessprobe sidecar's --health-port")
    return problems


@check
def controller_wiring(objs: list[dict[str, Any]]) -> list[str]:
    dep = find(objs, "Deployment", CONTROLLER_DEPLOYMENT)
    if dep is None:
        return [f"no Deployment {CONTROLLER_DEPLOYMENT}"]
    problems = []
    if dep.get("spec", {}).get("replicas") != 1:
        problems.append("the controller Deployment does not have exactly 1 replica")
    c = container(dep, DRIVER_CONTAINER)
    if c is None or (c.get("args") or [])[:1] != ["controller"]:
        problems.append("the controller Deployment does not run `iolane controller`")
    r = container_by_image(dep, "/csi-resizer:")
    if r is None:
        problems.append("the controller Deployment has no csi-resizer")
    elif "--leader-election" not in (r.get("args") or []):
        problems.append("csi-resizer runs without --leader-election")
    return problems


def node_configs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for o in objs:
        if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith("iolane-node-config"):
            out.append((name_of(o), tomllib.loads(o.get("data", {}).get("node.toml", ""))))
    return out


@check
def node_config_keys(objs: list[dict[str, Any]]) -> list[str]:
    configs = node_configs(objs)
    if not configs:
        return ["no iolane-node-config ConfigMap with a node.toml"]
    problems = []
    for where, cfg in configs:
        for k in set(cfg) - CONFIG_TOP_KEYS:
            problems.append(f"{where}: unknown top-level key {k!r}")
        for k in set(cfg.get("loop", {})) - CONFIG_LOOP_KEYS:
            problems.append(f"{where}: unknown key loop.{k}")
        for i, dc in enumerate(cfg.get("device_class", [])):
            for k in set(dc) - CONFIG_CLASS_KEYS:
                problems.append(f"{where}: unknown key device_class[{i}].{k}")
            for k in ("name", "devices"):
                if k not in dc:
                    problems.append(f"{where}: device_class[{i}] has no {k}")
        for name, t in cfg.get("tiers", {}).items():
            for k in set(t) - CONFIG_TIER_KEYS:
                problems.append(f"{where}: unknown key tiers.{name}.{k}")
    return problems


@check
def storage_classes(objs: list[dict[str, Any]]) -> list[str]:
    tiers = set(BUILTIN_TIERS)
    for _, cfg in node_configs(objs):
        tiers |= set(cfg.get("tiers", {}))
    problems = []
    classes = [o for o in objs if o.get("kind") == "StorageClass"]
    if not classes:
        problems.append("no StorageClass")
    for sc in classes:
        n = name_of(sc)
        if sc.get("provisioner") != DRIVER_NAME:
            continue
        if sc.get("volumeBindingMode") != "WaitForFirstConsumer":
            problems.append(f"{n}: volumeBindingMode is not WaitForFirstConsumer")
        if sc.get("allowVolumeExpansion") is not True:
            problems.append(f"{n}: allowVolumeExpansion is not true")
        params = sc.get("parameters") or {}
        for k in params:
            if k.startswith("iolane.dev/") and k not in STORAGE_CLASS_KEYS:
                problems.append(f"{n}: unknown parameter {k}")
        tier = params.get("iolane.dev/tier")
        if tier is not None and tier not in tiers:
            problems.append(f"{n}: tier {tier!r} is not defined in the node config")
        for t in (params.get("iolane.dev/allowed-tiers") or "").split(","):
            if t and t not in tiers:
                problems.append(f"{n}: allowed tier {t!r} is not defined in the node config")
        if params.get("csi.storage.k8s.io/fstype") not in ("ext4", "xfs"):
            problems.append(f"{n}: csi.storage.k8s.io/fstype is not ext4 or xfs")
    for vac in (o for o in objs if o.get("kind") == "VolumeAttributesClass"):
        if vac.get("driverName") != DRIVER_NAME:
            continue
        for k in vac.get("parameters") or {}:
            if k not in MUTABLE_KEYS:
                problems.append(f"{name_of(vac)}: {k} is not a mutable parameter")
        if vac.get("metadata", {}).get("namespace"):
            problems.append(f"{name_of(vac)}: a cluster-scoped object carries a namespace")
    return problems


# ---------------------------------------------------------------------------------------
# Schema validation

def schema_problems(objs: list[dict[str, Any]]) -> tuple[list[str], int, int]:
    problems, valid, skipped = [], 0, 0
    for o in objs:
        if (o.get("apiVersion"), o.get("kind")) in CRD_KINDS:
            skipped += 1
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
            valid += 1
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{name_of(o)}: {e.message}")
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append(f"{name_of(o)}: {path}: {e.message}")
    return problems, valid, skipped


# ---------------------------------------------------------------------------------------
# Self-test: every invariant must catch a breakage made for it.

def _ds(objs):
    return find(objs, "DaemonSet", NODE_DAEMONSET)


def _c(objs, name):
    return container(_ds(objs), name)


def _prov(objs):
    return container_by_image(_ds(objs), "/csi-provisioner:")


def _mount(objs, path):
    return next(m for m in _c(objs, DRIVER_CONTAINER)["volumeMounts"] if m["mountPath"] == path)


def _env_drop(c, name):
    c["env"] = [e for e in c["env"] if e["name"] != name]


BREAKAGES: list[tuple[str, str, Callable[[list[dict[str, Any]]], None]]] = [
    ("csidriver_fields", "attachRequired true",
     lambda o: find(o, "CSIDriver", DRIVER_NAME)["spec"].update(attachRequired=True)),
    ("csidriver_fields", "storageCapacity dropped",
     lambda o: find(o, "CSIDriver", DRIVER_NAME)["spec"].pop("storageCapacity")),
    ("csidriver_fields", "Ephemeral mode added",
     lambda o: find(o, "CSIDriver", DRIVER_NAME)["spec"].update(volumeLifecycleModes=["Persistent", "Ephemeral"])),
    ("provisioner_flags", "--strict-topology dropped",
     lambda o: _prov(o)["args"].remove("--strict-topology")),
    ("provisioner_flags", "ownerref level 1",
     lambda o: _prov(o).update(args=[a.replace("level=0", "level=1") for a in _prov(o)["args"]])),
    ("provisioner_flags", "POD_NAME missing", lambda o: _env_drop(_prov(o), "POD_NAME")),
    ("images_pinned", "driver image :latest",
     lambda o: _c(o, DRIVER_CONTAINER).update(image="ghcr.io/iolane/iolane:latest")),
    ("images_pinned", "untagged sidecar",
     lambda o: _prov(o).update(image="registry.k8s.io/sig-storage/csi-provisioner")),
    ("images_pinned", "registry port mistaken for a tag",
     lambda o: _c(o, DRIVER_CONTAINER).update(image="localhost:5000/iolane")),
    ("resources_everywhere", "registrar without limits",
     lambda o: container_by_image(_ds(o), "/csi-node-driver-registrar:")["resources"].pop("limits")),
    ("resources_everywhere", "controller without cpu request",
     lambda o: container(find(o, "Deployment", CONTROLLER_DEPLOYMENT), DRIVER_CONTAINER)["resources"]["requests"].pop("cpu")),
    ("privileged_only_driver", "privileged provisioner",
     lambda o: _prov(o)["securityContext"].update(privileged=True)),
    ("privileged_only_driver", "driver not privileged",
     lambda o: _c(o, DRIVER_CONTAINER)["securityContext"].update(privileged=False)),
    ("privileged_only_driver", "hostNetwork on the DaemonSet",
     lambda o: pod_spec(_ds(o)).update(hostNetwork=True)),
    ("kubelet_mounts_bidirectional", "pods dir HostToContainer",
     lambda o: _mount(o, f"{KUBELET_ROOT}/pods").update(mountPropagation="HostToContainer")),
    ("kubelet_mounts_bidirectional", "plugins dir not mounted",
     lambda o: _c(o, DRIVER_CONTAINER).update(volumeMounts=[
         m for m in _c(o, DRIVER_CONTAINER)["volumeMounts"] if m["mountPath"] != f"{KUBELET_ROOT}/plugins"])),
    ("driver_wiring", "--path-root dropped",
     lambda o: _c(o, DRIVER_CONTAINER).update(args=[a for a in _c(o, DRIVER_CONTAINER)["args"] if not a.startswith("--path-root")])),
    ("driver_wiring", "liveness probe on the wrong port",
     lambda o: _c(o, DRIVER_CONTAINER)["livenessProbe"]["httpGet"].update(port=9999)),
    ("driver_wiring", "registration path elsewhere",
     lambda o: container_by_image(_ds(o), "/csi-node-driver-registrar:").update(args=[
         "--csi-address=/csi/csi.sock", "--kubelet-registration-path=/var/lib/kubelet/plugins/other/csi.sock"])),
    ("controller_wiring", "resizer without leader election",
     lambda o: container_by_image(find(o, "Deployment", CONTROLLER_DEPLOYMENT), "/csi-resizer:")["args"].remove("--leader-election")),
    ("controller_wiring", "two replicas",
     lambda o: find(o, "Deployment", CONTROLLER_DEPLOYMENT)["spec"].update(replicas=2)),
    ("node_config_keys", "misspelt device-class key",
     lambda o: next(x for x in o if x.get("kind") == "ConfigMap")["data"].update(
         {"node.toml": '[[device_class]]\nname = "a"\ndevices = ["/dev/sda"]\noverprovision = 2.0\n'})),
    ("storage_classes", "unknown iolane.dev parameter",
     lambda o: find(o, "StorageClass", "iolane-batch")["parameters"].update({"iolane.dev/tierr": "batch"})),
    ("storage_classes", "tier the node config lacks",
     lambda o: find(o, "StorageClass", "iolane-batch")["parameters"].update({"iolane.dev/tier": "gold"})),
    ("storage_classes", "Immediate binding",
     lambda o: find(o, "StorageClass", "iolane-streaming").update(volumeBindingMode="Immediate")),
    ("storage_classes", "VolumeAttributesClass with allowed-tiers",
     lambda o: find(o, "VolumeAttributesClass", "iolane-batch")["parameters"].update({"iolane.dev/allowed-tiers": "batch"})),
]


def self_test(base: list[dict[str, Any]]) -> list[str]:
    """Problems with the checks themselves: a breakage an invariant did not report, or a
    schema breakage the validator accepted."""
    failures = []
    for name, fn in CHECKS.items():
        if fn(copy.deepcopy(base)):
            failures.append(f"self-test: {name} fails on the unbroken default overlay")
    covered = {b[0] for b in BREAKAGES}
    for name in CHECKS:
        if name not in covered:
            failures.append(f"self-test: invariant {name} has no breakage testing it")
    for name, what, breakage in BREAKAGES:
        objs = copy.deepcopy(base)
        breakage(objs)
        if not CHECKS[name](objs):
            failures.append(f"self-test: {name} did not report: {what}")
    # Strict schema validation must refuse an unknown field and a wrong type, and an
    # unknown kind must not pass as "no schema, fine".
    broken = copy.deepcopy(base)
    _mount(broken, f"{KUBELET_ROOT}/pods")["mountPropogation"] = "Bidirectional"
    find(broken, "CSIDriver", DRIVER_NAME)["spec"]["podInfoOnMount"] = "yes"
    broken.append({"apiVersion": "iolane.dev/v1", "kind": "Tier", "metadata": {"name": "x"}})
    problems, _, _ = schema_problems(broken)
    for needle in ("mountPropogation", "podInfoOnMount", "Tier"):
        if not any(needle in p for p in problems):
            failures.append(f"self-test: schema validation accepted a broken object ({needle})")
    return failures


def dashboard_problems() -> list[str]:
    """The Grafana dashboard parses and queries only iolane's own metrics."""
    import json

    path = DEPLOY / "dashboards/iolane.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return [f"{path.name}: {e}"]
    problems = []
    for p in dash.get("panels", []):
        for t in p.get("targets", []):
            names = set(re.findall(r"\b([a-z_][a-z0-9_]*)\{", t.get("expr", "")))
            for n in names - {"by"}:
                if not n.startswith("iolane_"):
                    problems.append(f"{path.name}: panel {p.get('title')!r} queries {n}")
    return problems


# ---------------------------------------------------------------------------------------

@dataclass
class Tally:
    passed: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)

    def record(self, label: str, problems: list[str]) -> None:
        if problems:
            self.failed += 1
            self.problems += [f"{label}: {p}" for p in problems]
            print(f"FAIL {label}")
            for p in problems:
                print(f"     {p}")
        else:
            self.passed += 1


def main() -> int:
    overlays = sorted(p.parent for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
    if not overlays:
        print("check_manifests: no overlays found", file=sys.stderr)
        return 1
    tally = Tally()
    rendered: dict[str, list[dict[str, Any]]] = {}
    for overlay in overlays:
        label = overlay.name
        try:
            objs = render(overlay)
        except subprocess.CalledProcessError as e:
            tally.record(f"{label}: render", [e.stderr.strip()])
            continue
        rendered[label] = objs
        tally.record(f"{label}: render", [])
        problems, valid, skipped = schema_problems(objs)
        tally.record(f"{label}: schema", problems)
        print(f"  {label}: {len(objs)} objects, {valid} valid against Kubernetes "
              f"{KUBERNETES_VERSION} (strict), {skipped} CRD objects skipped")
        for name, fn in CHECKS.items():
            tally.record(f"{label}: {name}", fn(objs))
    tally.record("dashboard", dashboard_problems())
    if "default" in rendered:
        failures = self_test(rendered["default"])
        print(f"  self-test: {len(BREAKAGES)} breakages for {len(CHECKS)} invariants, "
              f"plus strict-schema breakages: {len(failures)} not caught")
        tally.record("self-test", failures)
    else:
        tally.record("self-test", ["the default overlay did not render"])
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
