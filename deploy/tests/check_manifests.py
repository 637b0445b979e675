#!/usr/bin/env python3
"""Offline checks of iolane's Kubernetes manifests.

For every overlay under deploy/overlays:
  1. render it with `kubectl kustomize`;
  2. validate every object against the Kubernetes 1.34 and 1.36 OpenAPI schemas, strictly (unknown
     fields are errors). Only the kinds in CRD_KINDS are skipped, by name: they come from
     CRDs (the Prometheus Operator's PodMonitor) that the core schemas do not describe;
  3. check the invariants below, which a schema cannot express (flags and IOLANE_*
     variables of the `iolane` containers are read from csi-driver/src/config/cli.rs).

Then, once:
  4. METRICS, the metrics /metrics serves, against the code that registers them;
  5. every query of deploy/dashboards/iolane.json against METRICS: names, labels, and
     the `key` values of iolane_volume_io_limit;
  6. the docs (METRIC_DOCS) against METRICS: no invented names, and docs/operations.md
     describes every metric.

Then it runs its own self-test: each invariant is fed a broken copy of the default
overlay, and the dashboard and docs checks broken copies of theirs, and each must report
it, so a check that can no longer fail is caught.

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

# The oldest Kubernetes iolane supports and the newest it is checked against; every object
# must validate against both (a field removed or renamed in between fails one of them).
KUBERNETES_VERSIONS = ("1.34.0", "1.36.0")
DEPLOY = Path(__file__).resolve().parent.parent
REPO = DEPLOY.parent
KUBECTL = "/usr/bin/kubectl"

DRIVER_NAME = "csi.iolane.dev"
NAMESPACE = "iolane"
NODE_DAEMONSET = "iolane-node"
CONTROLLER_DEPLOYMENT = "iolane-controller"
DRIVER_CONTAINER = "iolane"
KUBELET_ROOT = "/var/lib/kubelet"
# The only two host directories the driver mounts Bidirectional: kubelet's pod volume
# directories (filesystem target paths) and its CSI staging directory (staging paths and
# block-volume publish paths). Never all of {KUBELET_ROOT}/plugins.
KUBELET_DIRS = (f"{KUBELET_ROOT}/pods", f"{KUBELET_ROOT}/plugins/kubernetes.io/csi")
PLUGIN_DIR = f"{KUBELET_ROOT}/plugins/{DRIVER_NAME}"

# Kinds defined by CRDs, skipped by schema validation (and only these).
CRD_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
             ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass")}
# The fields of a VolumeSnapshotClass (snapshot.storage.k8s.io/v1, the external-snapshotter
# CRD): no schema of it is at hand offline, so `snapshots_wiring` checks these by hand.
SNAPSHOT_CLASS_FIELDS = {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}

# csi-provisioner in distributed mode: every one of these, exactly as written.
PROVISIONER_FLAGS = (
    "--node-deployment",
    "--enable-capacity",
    "--capacity-ownerref-level=0",
    "--extra-create-metadata",
    "--strict-topology",
    "--immediate-topology=false",
    # An Immediate class must not land on a random node (docs/operations.md).
    "--node-deployment-immediate-binding=false",
    # No snapshots: the VolumeSnapshot finalizer sweeper stays off.
    "--snapshot-orphan-sweep-interval=0",
)
# ... and the downward-API variables it needs, with their fields.
PROVISIONER_ENV = {
    "NODE_NAME": "spec.nodeName",
    "NAMESPACE": "metadata.namespace",
    "POD_NAME": "metadata.name",
}

WORKLOAD_KINDS = {"DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job", "Pod"}

# Keys of the node config (csi-driver/src/config/node.rs, csi-driver/src/backend/lvm/class.rs,
# iops-controller/src/tier/config.rs).
CONFIG_TOP_KEYS = {"loop", "device_class", "tiers"}
CONFIG_LOOP_KEYS = {"overprovision_ratio"}
CONFIG_CLASS_KEYS = {
    "name", "devices", "vg", "thin_pool", "chunk_size", "zero", "overprovision_ratio",
    "data_high_watermark", "metadata_high_watermark", "wipe", "pool_size_percent", "spares",
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


def rust_cli() -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """From csi-driver/src/config/cli.rs: the long flags of each `iolane` subcommand (the
    fields of its clap Args struct, plus the global ones of Cli), the values of the flags
    that take a ValueEnum, and the IOLANE_* environment variables the flags read."""
    text = (REPO / "csi-driver/src/config/cli.rs").read_text()

    def body(kind: str, name: str) -> str:
        m = re.search(rf"pub {kind} {name} \{{(.*?)\n\}}", text, re.S)
        if not m:
            raise SystemExit(f"check_manifests: {kind} {name} not found in csi-driver/src/config/cli.rs")
        return m.group(1)

    def flags(struct: str) -> set[str]:
        # Every field is an `#[arg(long, ...)]`; clap spells `cgroup_root` `--cgroup-root`.
        return {"--" + f.replace("_", "-") for f in re.findall(r"^\s*pub (\w+):", body("struct", struct), re.M)}

    def variants(enum: str) -> set[str]:
        return {v.lower() for v in re.findall(r"^\s*(\w+),", body("enum", enum), re.M)}

    global_flags = flags("Cli") - {"--command"}
    subcommands = {
        "node": flags("NodeArgs"),
        "controller": flags("ControllerArgs"),
        "status": flags("StatusArgs"),
        "bench": flags("BenchArgs"),
        "demo": flags("DemoArgs"),
    }
    values = {"--kubernetes": variants("KubeMode"), "--log-format": variants("LogFormat")}
    env = set(re.findall(r'env = "(IOLANE_\w+)"', text))
    return {k: v | global_flags for k, v in subcommands.items()}, values, env


CLI_FLAGS, CLI_VALUES, CLI_ENV = rust_cli()


# ---------------------------------------------------------------------------------------
# Helpers

def render(overlay: Path) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def render_component(component: Path) -> list[dict[str, Any]]:
    """The default overlay with one component added, as an overlay would include it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix=".component-", dir=DEPLOY) as tmp:
        rel = Path("..") / component.relative_to(DEPLOY)
        (Path(tmp) / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"resources:\n  - ../overlays/default\ncomponents:\n  - {rel}\n"
        )
        return render(Path(tmp))


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
    for f in ("--capacity-ownerref-level", "--immediate-topology",
              "--node-deployment-immediate-binding", "--snapshot-orphan-sweep-interval"):
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
def snapshots_wiring(objs: list[dict[str, Any]]) -> list[str]:
    """csi-snapshotter in distributed mode beside the driver, and a well-formed
    VolumeSnapshotClass of this driver (checked field by field: it is a CRD kind)."""
    problems = []
    ds = find(objs, "DaemonSet", NODE_DAEMONSET)
    c = container_by_image(ds, "/csi-snapshotter:")
    if c is None:
        problems.append(f"DaemonSet {NODE_DAEMONSET} has no csi-snapshotter container")
    else:
        args = c.get("args") or []
        if "--node-deployment" not in args:
            problems.append("csi-snapshotter lacks --node-deployment")
        if flag_value(args, "--csi-address") != "/csi/csi.sock":
            problems.append("csi-snapshotter --csi-address is not /csi/csi.sock")
        env = {e.get("name"): e for e in c.get("env") or []}
        got = env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        if got != "spec.nodeName":
            problems.append("csi-snapshotter env NODE_NAME is not the downward-API field spec.nodeName")
    classes = [o for o in objs if o.get("kind") == "VolumeSnapshotClass"]
    if not classes:
        problems.append("no VolumeSnapshotClass")
    for o in classes:
        if o.get("apiVersion") != "snapshot.storage.k8s.io/v1":
            problems.append(f"{name_of(o)}: apiVersion {o.get('apiVersion')!r}")
        unknown = sorted(set(o) - SNAPSHOT_CLASS_FIELDS)
        if unknown:
            problems.append(f"{name_of(o)}: unknown fields {unknown}")
        if o.get("driver") != DRIVER_NAME:
            problems.append(f"{name_of(o)}: driver is {o.get('driver')!r}, want {DRIVER_NAME}")
        if o.get("deletionPolicy") not in ("Delete", "Retain"):
            problems.append(f"{name_of(o)}: deletionPolicy {o.get('deletionPolicy')!r}")
        params = o.get("parameters", {})
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            problems.append(f"{name_of(o)}: parameters must map strings to strings")
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
    """Requests and limits on every container, except the node driver's CPU limit, which
    must be absent: mkfs and the LVM tools run as its children, and a CFS quota throttles
    them during a burst of stages."""
    problems = []
    for o in objs:
        for c in containers(o):
            res = c.get("resources") or {}
            node_driver = (
                o.get("kind") == "DaemonSet"
                and o["metadata"].get("name") == NODE_DAEMONSET
                and c.get("name") == DRIVER_CONTAINER
            )
            for section in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if node_driver and (section, r) == ("limits", "cpu"):
                        if (res.get("limits") or {}).get("cpu"):
                            problems.append(f"{name_of(o)} container {c.get('name')}: has a CPU limit")
                        continue
                    if not (res.get(section) or {}).get(r):
                        problems.append(f"{name_of(o)} container {c.get('name')}: no {section}.{r}")
    return problems


@check
def tolerates_every_taint(objs: list[dict[str, Any]]) -> list[str]:
    """The node DaemonSet tolerates every taint (one `operator: Exists` without a key or
    effect): its nodeSelector picks the nodes, and no taint may keep it off one."""
    spec = pod_spec(find(objs, "DaemonSet", NODE_DAEMONSET) or {}) or {}
    everything = [
        t for t in spec.get("tolerations") or []
        if t.get("operator") == "Exists" and not t.get("key") and not t.get("effect")
    ]
    return [] if everything else [f"DaemonSet {NODE_DAEMONSET} does not tolerate every taint"]


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
    for path, m in mounts.items():
        if m.get("mountPropagation") == "Bidirectional" and path not in KUBELET_DIRS:
            problems.append(f"driver mounts {path} Bidirectional; only {', '.join(KUBELET_DIRS)} may be")
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
    # Readiness is the driver's own /healthz (503 while the backend is not ready), and a
    # rolling update waits for it.
    ready = (c.get("readinessProbe") or {}).get("httpGet") or {}
    if ready.get("path") != "/healthz" or port is None or port_number(c, ready.get("port")) != port:
        problems.append("driver readinessProbe is not an httpGet of /healthz on the --metrics-address port")
    if not (ds.get("spec", {}).get("minReadySeconds") or 0) > 0:
        problems.append(f"DaemonSet {NODE_DAEMONSET} has no minReadySeconds")
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


@check
def driver_flags(objs: list[dict[str, Any]]) -> list[str]:
    """Every `iolane` container runs a real subcommand with flags and IOLANE_* variables
    that exist in csi-driver/src/config/cli.rs, each flag as one `--flag=value` argument."""
    problems = []
    seen = 0
    for o in objs:
        for c in containers(o):
            if c.get("name") != DRIVER_CONTAINER:
                continue
            seen += 1
            where = f"{name_of(o)} container {c.get('name')}"
            args = c.get("args") or []
            sub = args[0] if args else None
            if sub not in CLI_FLAGS:
                problems.append(f"{where}: {sub!r} is not an iolane subcommand")
                continue
            for a in args[1:]:
                if not a.startswith("--"):
                    problems.append(f"{where}: argument {a!r} is not a --flag=value")
                    continue
                flag, _, value = a.partition("=")
                if flag not in CLI_FLAGS[sub]:
                    problems.append(f"{where}: `iolane {sub}` has no flag {flag}")
                elif flag in CLI_VALUES and value not in CLI_VALUES[flag]:
                    problems.append(f"{where}: {flag}={value} is not one of {sorted(CLI_VALUES[flag])}")
            for e in c.get("env") or []:
                n = e.get("name", "")
                if n.startswith("IOLANE_") and n not in CLI_ENV:
                    problems.append(f"{where}: env {n} is read by no flag")
    if not seen:
        problems.append(f"no container named {DRIVER_CONTAINER}")
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
    """Strict validation against every version of KUBERNETES_VERSIONS; `valid` counts the
    objects that passed all of them."""
    problems, valid, skipped = [], 0, 0
    for o in objs:
        if (o.get("apiVersion"), o.get("kind")) in CRD_KINDS:
            skipped += 1
            continue
        ok = True
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError as e:
                problems.append(f"{name_of(o)} (Kubernetes {version}): {e.message}")
                ok = False
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{name_of(o)} (Kubernetes {version}): {path}: {e.message}")
                ok = False
        valid += ok
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
    ("snapshots_wiring", "snapshotter not distributed",
     lambda o: container_by_image(_ds(o), "/csi-snapshotter:")["args"].remove("--node-deployment")),
    ("snapshots_wiring", "snapshot class of another driver",
     lambda o: next(x for x in o if x.get("kind") == "VolumeSnapshotClass").update(driver="other.csi.io")),
    ("snapshots_wiring", "snapshot class with a misspelt field",
     lambda o: next(x for x in o if x.get("kind") == "VolumeSnapshotClass").update(deletionPolcy="Delete")),
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
    ("kubelet_mounts_bidirectional", "staging dir not mounted",
     lambda o: _c(o, DRIVER_CONTAINER).update(volumeMounts=[
         m for m in _c(o, DRIVER_CONTAINER)["volumeMounts"] if m["mountPath"] != KUBELET_DIRS[1]])),
    ("kubelet_mounts_bidirectional", "all of the plugins dir Bidirectional",
     lambda o: _mount(o, KUBELET_DIRS[1]).update(mountPath=f"{KUBELET_ROOT}/plugins")),
    ("tolerates_every_taint", "only the storage-node taint",
     lambda o: pod_spec(_ds(o)).update(tolerations=[{"key": "iolane.dev/storage-node", "operator": "Exists"}])),
    ("resources_everywhere", "CPU limit back on the driver",
     lambda o: _c(o, DRIVER_CONTAINER)["resources"]["limits"].update(cpu="1")),
    ("provisioner_flags", "immediate binding left on",
     lambda o: _prov(o)["args"].remove("--node-deployment-immediate-binding=false")),
    ("driver_wiring", "--path-root dropped",
     lambda o: _c(o, DRIVER_CONTAINER).update(args=[a for a in _c(o, DRIVER_CONTAINER)["args"] if not a.startswith("--path-root")])),
    ("driver_wiring", "liveness probe on the wrong port",
     lambda o: _c(o, DRIVER_CONTAINER)["livenessProbe"]["httpGet"].update(port=9999)),
    ("driver_wiring", "readiness probe on the sidecar's port",
     lambda o: _c(o, DRIVER_CONTAINER)["readinessProbe"]["httpGet"].update(port="healthz")),
    ("driver_wiring", "no minReadySeconds",
     lambda o: _ds(o)["spec"].pop("minReadySeconds")),
    ("driver_wiring", "registration path elsewhere",
     lambda o: container_by_image(_ds(o), "/csi-node-driver-registrar:").update(args=[
         "--csi-address=/csi/csi.sock", "--kubelet-registration-path=/var/lib/kubelet/plugins/other/csi.sock"])),
    ("controller_wiring", "resizer without leader election",
     lambda o: container_by_image(find(o, "Deployment", CONTROLLER_DEPLOYMENT), "/csi-resizer:")["args"].remove("--leader-election")),
    ("controller_wiring", "two replicas",
     lambda o: find(o, "Deployment", CONTROLLER_DEPLOYMENT)["spec"].update(replicas=2)),
    ("driver_flags", "node flag that does not exist",
     lambda o: _c(o, DRIVER_CONTAINER)["args"].append("--metrics-port=9820")),
    ("driver_flags", "node-only flag on the controller",
     lambda o: container(find(o, "Deployment", CONTROLLER_DEPLOYMENT), DRIVER_CONTAINER)["args"].append("--node-id=x")),
    ("driver_flags", "--kubernetes with a value it lacks",
     lambda o: _c(o, DRIVER_CONTAINER).update(args=[
         "--kubernetes=on" if a.startswith("--kubernetes=") else a for a in _c(o, DRIVER_CONTAINER)["args"]])),
    ("driver_flags", "flag value as a separate argument",
     lambda o: _c(o, DRIVER_CONTAINER)["args"].extend(["--reconcile-period", "10"])),
    ("driver_flags", "IOLANE_ variable no flag reads",
     lambda o: _c(o, DRIVER_CONTAINER)["env"].append({"name": "IOLANE_METRICS_PORT", "value": "9820"})),
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


# ---------------------------------------------------------------------------------------
# Metrics: what /metrics serves, checked against the code; then the dashboard and the docs
# checked against that.

IOC_METRICS = "iops-controller/src/metrics.rs"
POOL_METRICS = "csi-driver/src/status/pool_gauges.rs"
HTTP_METRICS = "csi-driver/src/http.rs"
RPC_METRICS = "csi-driver/src/grpc/mod.rs"
PRIO_METRICS = "iops-controller/src/metrics/priority.rs"

# Name as scraped -> (type, labels, source file, name the code registers: prometheus_client
# adds `_total` to counters and the unit, `_bytes` or `_seconds`).
METRICS: dict[str, tuple[str, frozenset[str], str, str]] = {
    "iolane_volume_io_limit": ("gauge", frozenset({"volume", "pod_uid", "tier", "key"}), IOC_METRICS, "iolane_volume_io_limit"),
    "iolane_volume_read_ios_total": ("counter", frozenset({"volume", "pod_uid"}), IOC_METRICS, "iolane_volume_read_ios"),
    "iolane_volume_write_ios_total": ("counter", frozenset({"volume", "pod_uid"}), IOC_METRICS, "iolane_volume_write_ios"),
    "iolane_volume_read_bytes_total": ("counter", frozenset({"volume", "pod_uid"}), IOC_METRICS, "iolane_volume_read"),
    "iolane_volume_write_bytes_total": ("counter", frozenset({"volume", "pod_uid"}), IOC_METRICS, "iolane_volume_write"),
    "iolane_reconcile_passes_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_passes"),
    "iolane_reconcile_applies_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_applies"),
    "iolane_reconcile_repairs_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_repairs"),
    "iolane_reconcile_pending_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_pending"),
    "iolane_reconcile_gone_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_gone"),
    "iolane_reconcile_errors_total": ("counter", frozenset(), IOC_METRICS, "iolane_reconcile_errors"),
    "iolane_reconcile_last_pass_duration_seconds": ("gauge", frozenset(), IOC_METRICS, "iolane_reconcile_last_pass_duration"),
    "iolane_build_info": ("gauge", frozenset({"version"}), HTTP_METRICS, "iolane_build_info"),
    "iolane_pool_data_percent": ("gauge", frozenset({"device_class", "location"}), POOL_METRICS, "iolane_pool_data_percent"),
    "iolane_pool_metadata_percent": ("gauge", frozenset({"device_class", "location"}), POOL_METRICS, "iolane_pool_metadata_percent"),
    "iolane_pool_size_bytes": ("gauge", frozenset({"device_class", "location"}), POOL_METRICS, "iolane_pool_size_bytes"),
    "iolane_pool_provisioned_bytes": ("gauge", frozenset({"device_class", "location"}), POOL_METRICS, "iolane_pool_provisioned_bytes"),
    "iolane_csi_requests_total": ("counter", frozenset({"method", "code"}), RPC_METRICS, "iolane_csi_requests"),
    "iolane_csi_request_duration_seconds": ("histogram", frozenset({"method"}), RPC_METRICS, "iolane_csi_request_duration"),
    # The priority controllers ([priority], on by default).
    "iolane_priority_writes_total": ("counter", frozenset(), PRIO_METRICS, "iolane_priority_writes"),
    "iolane_priority_deferred_total": ("counter", frozenset(), PRIO_METRICS, "iolane_priority_deferred"),
    "iolane_priority_device_capacity_iops": ("gauge", frozenset({"device", "direction"}), PRIO_METRICS, "iolane_priority_device_capacity_iops"),
    "iolane_priority_device_capacity_scale": ("gauge", frozenset({"device"}), PRIO_METRICS, "iolane_priority_device_capacity_scale"),
    "iolane_priority_class_demand_ratio": ("gauge", frozenset({"device", "class"}), PRIO_METRICS, "iolane_priority_class_demand_ratio"),
    "iolane_priority_class_publications": ("gauge", frozenset({"device", "class"}), PRIO_METRICS, "iolane_priority_class_publications"),
    "iolane_priority_batch_budget_ratio": ("gauge", frozenset({"device"}), PRIO_METRICS, "iolane_priority_batch_budget_ratio"),
    "iolane_priority_device_saturated": ("gauge", frozenset({"device"}), PRIO_METRICS, "iolane_priority_device_saturated"),
    "iolane_priority_streaming_active": ("gauge", frozenset({"device"}), PRIO_METRICS, "iolane_priority_streaming_active"),
}
# Labels Prometheus puts on every sample of a target, and `node`, which the monitoring
# overlay's PodMonitor copies from the pod's node name.
TARGET_LABELS = frozenset({"node", "instance", "job", "namespace", "pod", "container", "endpoint"})
# Values of iolane_volume_io_limit's `key`. A key at `max` has no series.
IO_LIMIT_KEYS = {"riops", "wiops", "rbps", "wbps"}
# Values of iolane_csi_requests_total's `code`: tonic's Code, as `{code:?}` prints it.
GRPC_CODES = {
    "Ok", "Cancelled", "Unknown", "InvalidArgument", "DeadlineExceeded", "NotFound",
    "AlreadyExists", "PermissionDenied", "ResourceExhausted", "FailedPrecondition", "Aborted",
    "OutOfRange", "Unimplemented", "Internal", "Unavailable", "DataLoss", "Unauthenticated",
}
# Files that document the metrics; every name in them must be real.
METRIC_DOCS = ("docs/operations.md", "docs/runbooks.md", "docs/compatibility.md", "CHANGELOG.md",
               "README.md", "deploy/README.md", "ARCHITECTURE.md")
# The one that is the reference: it must name every metric.
METRIC_REFERENCE = "docs/operations.md"


def series_names() -> dict[str, frozenset[str]]:
    """Every series name a scrape can return, with the labels it may carry."""
    out = {}
    for name, (kind, labels, _, _) in METRICS.items():
        if kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


def code_without_tests(path: Path) -> str:
    text = path.read_text()
    return text.split("#[cfg(test)]", 1)[0]


def metrics_problems() -> list[str]:
    """METRICS matches the code both ways: each entry is registered, with its labels, in
    its file; each metric name registered anywhere in the driver's code is in METRICS."""
    problems = []
    for name, (_, labels, src, registered) in METRICS.items():
        text = code_without_tests(REPO / src)
        if f'"{registered}"' not in text:
            problems.append(f"{name}: {src} registers no {registered!r}")
        for label in labels:
            if f'"{label}"' not in text:
                problems.append(f"{name}: {src} has no label {label!r}")
    known = {registered for _, _, _, registered in METRICS.values()}
    for crate in ("csi-driver/src", "iops-controller/src"):
        for path in sorted((REPO / crate).rglob("*.rs")):
            if path.name == "tests.rs" or "tests" in path.relative_to(REPO / crate).parts[:-1]:
                continue
            for literal in re.findall(r'"(iolane_[a-z0-9_]+)"', code_without_tests(path)):
                if literal not in known:
                    problems.append(
                        f"{path.relative_to(REPO)} registers {literal!r}, which METRICS (and so "
                        f"the dashboard and docs checks) does not know"
                    )
    return problems


def dashboard_exprs(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) of every query of the dashboard, templating included."""
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])

    for p in panels(dash.get("panels") or []):
        for t in p.get("targets") or []:
            yield f"panel {p.get('title')!r}", t.get("expr", ""), t.get("legendFormat", "")
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") == "query":
            q = v.get("query")
            yield f"variable {v.get('name')!r}", q.get("query", "") if isinstance(q, dict) else q or "", ""


def expr_problems(expr: str, legend: str) -> list[str]:
    series = series_names()
    problems = []
    # Only iolane's own series, by their real names.
    for n in set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) - {"by", "without", "on", "ignoring"}:
        if not n.startswith("iolane_"):
            problems.append(f"queries {n}, not an iolane metric")
    used = set(re.findall(r"\biolane_[a-z0-9_]+", expr))
    for n in sorted(used - set(series)):
        problems.append(f"queries {n}, which iolane does not export")
    allowed = TARGET_LABELS.union(*(series.get(n, frozenset()) for n in used))
    # Label matchers: labels of that series; `key` values that have series.
    for n, matchers in re.findall(r"\b(iolane_[a-z0-9_]+)\s*\{([^}]*)\}", expr):
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            if n in series and label not in series[n] | TARGET_LABELS:
                problems.append(f"selects {n} by {label!r}, a label it does not have")
            if n == "iolane_volume_io_limit" and label == "key" and op == "=" and value not in IO_LIMIT_KEYS:
                problems.append(f'selects iolane_volume_io_limit{{key="{value}"}}, which has no series')
            if n == "iolane_csi_requests_total" and label == "code" and op in ("=", "!=") and value not in GRPC_CODES:
                problems.append(f'selects code="{value}", not a gRPC code as the label spells it ({sorted(GRPC_CODES)})')
    # Grouping and matching labels, label_values() and the legend: labels of the series used.
    grouped = re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr)
    names = [x.strip() for g in grouped for x in g.split(",") if x.strip()]
    names += re.findall(r"label_values\([^,]*,\s*(\w+)\s*\)", expr)
    names += re.findall(r"\{\{\s*(\w+)\s*\}\}", legend)
    for label in sorted(set(names) - allowed):
        problems.append(f"uses the label {label!r}, which none of {sorted(used)} has")
    return problems


def dashboard_problems(dash: dict[str, Any]) -> list[str]:
    """Every query of the Grafana dashboard uses only metrics iolane exports, with labels
    they have."""
    problems = []
    for where, expr, legend in dashboard_exprs(dash):
        problems += [f"iolane.json {where}: {p}" for p in expr_problems(expr, legend)]
    return problems


def load_dashboard() -> tuple[dict[str, Any] | None, list[str]]:
    import json

    path = DEPLOY / "dashboards/iolane.json"
    try:
        return json.loads(path.read_text()), []
    except (OSError, ValueError) as e:
        return None, [f"{path.name}: {e}"]


def docs_problems(texts: dict[str, str] | None = None) -> list[str]:
    """The docs name only real metrics, and the reference names every one."""
    if texts is None:
        texts = {d: (REPO / d).read_text() for d in METRIC_DOCS}
    series = series_names()
    problems = []
    for doc, text in texts.items():
        for token in sorted(set(re.findall(r"\biolane_[a-z0-9_]+", text))):
            real = token in series or token in METRICS or (
                token.endswith("_") and any(s.startswith(token) for s in series)
            )
            if not real:
                problems.append(f"{doc} names {token}, which iolane does not export")
    reference = texts.get(METRIC_REFERENCE, "")
    for name in METRICS:
        if f"`{name}`" not in reference:
            problems.append(f"{METRIC_REFERENCE} does not describe {name}")
    return problems


# Breakages of the dashboard and the docs; each must be reported.
def _dash_expr(dash: dict[str, Any], old: str, new: str) -> None:
    for _, expr, _ in dashboard_exprs(dash):
        if old in expr:
            break
    else:
        raise AssertionError(f"self-test: no dashboard query contains {old!r}")
    for p in dash["panels"]:
        for t in p.get("targets") or []:
            t["expr"] = t.get("expr", "").replace(old, new)


DASHBOARD_BREAKAGES: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("a metric renamed", lambda d: _dash_expr(d, "iolane_volume_read_ios_total", "iolane_volume_read_ops_total")),
    ("a label the metric lacks", lambda d: _dash_expr(d, "by (node, volume)", "by (node, volume, pvc)")),
    ("a key that has no series", lambda d: _dash_expr(d, 'key="wiops"', 'key="max"')),
    ("a metric of another exporter", lambda d: _dash_expr(d, "iolane_build_info{", "kube_pod_info{")),
    ("a gRPC code spelt as in the CSI spec", lambda d: _dash_expr(d, 'code!="Ok"', 'code!="OK"')),
    ("a selector label the series lacks", lambda d: _dash_expr(d, 'iolane_reconcile_repairs_total{node=~"$node"}',
                                                            'iolane_reconcile_repairs_total{node=~"$node", reason="drift"}')),
]


def dashboard_self_test(dash: dict[str, Any]) -> list[str]:
    failures = []
    if dashboard_problems(copy.deepcopy(dash)):
        failures.append("self-test: the dashboard check fails on the unbroken dashboard")
    for what, breakage in DASHBOARD_BREAKAGES:
        d = copy.deepcopy(dash)
        breakage(d)
        if not dashboard_problems(d):
            failures.append(f"self-test: the dashboard check did not report: {what}")
    texts = {d: (REPO / d).read_text() for d in METRIC_DOCS}
    for what, broken in (
        ("a metric the docs invent", dict(texts, **{"README.md": texts["README.md"] + "\n`iolane_volume_capacity_bytes`\n"})),
        ("a metric the reference omits", dict(texts, **{METRIC_REFERENCE: texts[METRIC_REFERENCE].replace("`iolane_build_info`", "build info")})),
    ):
        if not docs_problems(broken):
            failures.append(f"self-test: the docs check did not report: {what}")
    return failures


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
              f"{' and '.join(KUBERNETES_VERSIONS)} (strict), {skipped} CRD objects skipped")
        for name, fn in CHECKS.items():
            tally.record(f"{label}: {name}", fn(objs))
    # Every component, over the default overlay: it renders, validates strictly and keeps
    # every invariant.
    for component in sorted(p.parent for p in (DEPLOY / "components").glob("*/kustomization.yaml")):
        label = f"default+{component.name}"
        try:
            objs = render_component(component)
        except subprocess.CalledProcessError as e:
            tally.record(f"{label}: render", [e.stderr.strip()])
            continue
        tally.record(f"{label}: render", [])
        problems, valid, skipped = schema_problems(objs)
        tally.record(f"{label}: schema", problems)
        print(f"  {label}: {len(objs)} objects, {valid} valid, {skipped} CRD objects skipped")
        tally.record(f"{label}: invariants", [p for fn in CHECKS.values() for p in fn(objs)])
    tally.record("metrics table against the code", metrics_problems())
    dash, problems = load_dashboard()
    tally.record("dashboard", problems or dashboard_problems(dash))
    tally.record("docs name real metrics", docs_problems())
    if "default" in rendered:
        failures = self_test(rendered["default"])
        if dash is not None:
            failures += dashboard_self_test(dash)
        print(f"  self-test: {len(BREAKAGES)} breakages for {len(CHECKS)} invariants, "
              f"{len(DASHBOARD_BREAKAGES) + 2} for the dashboard and docs checks, "
              f"plus strict-schema breakages: {len(failures)} not caught")
        tally.record("self-test", failures)
    else:
        tally.record("self-test", ["the default overlay did not render"])
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
