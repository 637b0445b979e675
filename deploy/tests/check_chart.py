#!/usr/bin/env python3
"""Offline checks of the Helm chart charts/iolane against the kustomize manifests.

Needs a Helm v4 binary in $HELM (deploy/validate.sh builds one with deploy/tools/helm.sh).

  1. `helm lint --strict` of the chart, with its defaults and with every option on;
  2. `helm template` of the chart with its defaults, with the loop backend's values, and
     with every option on; each rendering validates strictly against the Kubernetes 1.34
     and 1.36 schemas (CRD kinds skipped by name) and keeps every invariant of
     check_manifests.py;
  3. the chart's defaults against deploy/overlays/default: the DaemonSet, the Deployment,
     the RBAC objects, the CSIDriver, the metrics Service, the StorageClasses and the
     VolumeAttributesClasses must be the same objects, after normalising what Helm adds
     (its labels, the config checksum annotation) and kustomize's ConfigMap name hash; the
     node config must parse to the same TOML document. The same for the loop values
     against deploy/overlays/loop, and the options against their components;
  4. values.schema.json refuses bad values (helm template must fail on them), and
     `kubeletDir` moves every kubelet path;
  5. a self-test: a changed argument, image or RBAC rule in the chart's output must make
     the diff fail.

The last line is `N passed, M failed`; exit status 0 only if nothing failed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import check_manifests as cm  # noqa: E402  (the schema check, invariants, renderer)

CHART = cm.REPO / "charts/iolane"
HELM = os.environ.get("HELM", "")
RELEASE = "iolane"

# Kinds where chart and overlay must agree exactly.
COMPARED_KINDS = {
    "DaemonSet", "Deployment", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
    "RoleBinding", "CSIDriver", "Service", "StorageClass", "VolumeAttributesClass",
    "ResourceQuota", "PodMonitor", "PrometheusRule",
}
# Labels Helm (the chart's helper) adds and kustomize does not.
HELM_LABELS = {"helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"}
HELM_ANNOTATIONS = {"checksum/node-config"}
CONFIGMAP = "iolane-node-config"

# Every option the chart has, on.
ALL_OPTIONS = [
    "--set", "monitoring.enabled=true",
    "--set", "gkeCriticalQuota.enabled=true",
    "--set", "openshift.enabled=true",
    "--set", "seLinuxMount=true",
]
LOOP_VALUES = """\
nodeConfig:
  loop:
    overprovision_ratio: 10.0
  deviceClasses: []
"""
# Values the schema must refuse: (what, a values file that differs from the defaults in
# that one point). Device classes are given whole, since a values file replaces a list.
GOOD_CLASS = """\
    - name: nvme
      devices: ["/dev/nvme1n1"]
"""
BAD_VALUES = [
    ("a CPU limit on the node driver", "node:\n  resources:\n    driver:\n      limits: {cpu: 1}\n"),
    ("an image tagged latest", "images:\n  csiProvisioner: {tag: latest}\n"),
    ("a digest that is not sha256", "images:\n  csiResizer: {digest: 'md5:abc'}\n"),
    ("an unknown device-class key", "nodeConfig:\n  deviceClasses:\n" + GOOD_CLASS + "      overprovision: 2.0\n"),
    ("a watermark above 100", "nodeConfig:\n  deviceClasses:\n" + GOOD_CLASS + "      data_high_watermark: 120\n"),
    ("a device outside /dev", "nodeConfig:\n  deviceClasses:\n    - {name: nvme, devices: [nvme1n1]}\n"),
    ("a tier cap of 1", "nodeConfig:\n  tiers:\n    batch: {read_iops: 1}\n"),
    ("a tier name with a capital", "nodeConfig:\n  tiers:\n    Gold: {read_iops: max}\n"),
    ("a relative kubelet directory", "kubeletDir: var/lib/kubelet\n"),
    ("an unknown top-level value", "nodeSelector: {a: b}\n"),
]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check)


def template(*extra: str) -> list[dict[str, Any]]:
    out = helm("template", RELEASE, str(CHART), "--namespace", cm.NAMESPACE, *extra).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def key(o: dict[str, Any]) -> tuple[str, str, str]:
    m = o.get("metadata", {})
    return (o.get("kind", ""), m.get("namespace", ""), m.get("name", ""))


def normalise(o: dict[str, Any]) -> dict[str, Any]:
    """The object without what only Helm or only kustomize adds."""
    o = copy.deepcopy(o)
    for meta in (o.get("metadata", {}), o.get("spec", {}).get("template", {}).get("metadata", {})):
        for field, drop in (("labels", HELM_LABELS), ("annotations", HELM_ANNOTATIONS)):
            if field in meta:
                for k in drop:
                    meta[field].pop(k, None)
                if not meta[field]:
                    del meta[field]
    for v in (cm.pod_spec(o) or {}).get("volumes") or []:
        cmap = v.get("configMap")
        if cmap and re.fullmatch(rf"{CONFIGMAP}(-[a-z0-9]{{10}})?", cmap.get("name", "")):
            cmap["name"] = CONFIGMAP
    return o


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Where two JSON-like values differ, as paths (lists compared item by item)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                out.append(f"{path}.{k}: only in the chart: {json.dumps(b[k])[:120]}")
            elif k not in b:
                out.append(f"{path}.{k}: only in kustomize: {json.dumps(a[k])[:120]}")
            else:
                out += differences(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items in kustomize, {len(b)} in the chart"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [f"{path}: kustomize {json.dumps(a)[:120]}, chart {json.dumps(b)[:120]}"]


def diff_objects(kustomize: list[dict[str, Any]], chart: list[dict[str, Any]]) -> list[str]:
    """The compared kinds of both renderings: the same set of objects, each identical
    after normalisation."""
    ko = {key(o): normalise(o) for o in kustomize if o.get("kind") in COMPARED_KINDS}
    ho = {key(o): normalise(o) for o in chart if o.get("kind") in COMPARED_KINDS}
    problems = [f"{'/'.join(k)}: only in kustomize" for k in sorted(set(ko) - set(ho))]
    problems += [f"{'/'.join(k)}: only in the chart" for k in sorted(set(ho) - set(ko))]
    for k in sorted(set(ko) & set(ho)):
        problems += [f"{'/'.join(k)}{d}" for d in differences(ko[k], ho[k])]
    return problems


def node_config(objs: list[dict[str, Any]]) -> dict[str, Any] | None:
    for o in objs:
        if o.get("kind") == "ConfigMap" and o["metadata"]["name"].startswith(CONFIGMAP):
            return tomllib.loads(o.get("data", {}).get("node.toml", ""))
    return None


def config_problems(kustomize: list[dict[str, Any]], chart: list[dict[str, Any]]) -> list[str]:
    a, b = node_config(kustomize), node_config(chart)
    if a is None or b is None:
        return ["a rendering has no node config ConfigMap"]
    return [f"node.toml{d}" for d in differences(a, b)]


def with_component(name: str) -> list[dict[str, Any]]:
    return cm.render_component(cm.DEPLOY / "components" / name)


def rendering_problems(label: str, objs: list[dict[str, Any]], tally: cm.Tally) -> None:
    problems, valid, skipped = cm.schema_problems(objs)
    tally.record(f"chart {label}: schema", problems)
    print(f"  chart {label}: {len(objs)} objects, {valid} valid against Kubernetes "
          f"{' and '.join(cm.KUBERNETES_VERSIONS)} (strict), {skipped} CRD objects skipped")
    tally.record(f"chart {label}: invariants", [p for fn in cm.CHECKS.values() for p in fn(objs)])


# Breakages of the chart's output the diff must report.
def _container(objs, kind, name, container):
    return cm.container(next(o for o in objs if key(o)[0] == kind and key(o)[2] == name), container)


SELF_TEST = [
    ("a provisioner argument dropped",
     lambda o: _container(o, "DaemonSet", "iolane-node", "csi-provisioner")["args"].pop()),
    ("a sidecar image without its digest",
     lambda o: _container(o, "Deployment", "iolane-controller", "csi-resizer").update(
         image=_container(o, "Deployment", "iolane-controller", "csi-resizer")["image"].split("@")[0])),
    ("an RBAC verb added",
     lambda o: next(x for x in o if key(x)[0] == "ClusterRole")["rules"][0]["verbs"].append("deletecollection")),
    ("a CSIDriver field changed",
     lambda o: next(x for x in o if key(x)[0] == "CSIDriver")["spec"].update(fsGroupPolicy="None")),
    ("a label kustomize does not set",
     lambda o: next(x for x in o if key(x)[0] == "DaemonSet")["metadata"]["labels"].update(extra="x")),
    ("a toleration narrowed",
     lambda o: cm.pod_spec(next(x for x in o if key(x)[0] == "DaemonSet")).update(
         tolerations=[{"key": "iolane.dev/storage-node", "operator": "Exists"}])),
]


def main() -> int:
    if not HELM or not Path(HELM).is_file():
        print("check_chart: set HELM to a Helm v4 binary (deploy/tools/helm.sh builds one)", file=sys.stderr)
        return 1
    tally = cm.Tally()
    for label, extra in (("defaults", []), ("every option", ALL_OPTIONS)):
        r = helm("lint", "--strict", str(CHART), *extra, check=False)
        tally.record(f"helm lint {label}", [] if r.returncode == 0 else [(r.stdout + r.stderr).strip()])

    loop_values = cm.DEPLOY / ".loop-values.yaml"
    loop_values.write_text(LOOP_VALUES)
    try:
        renders = {
            "defaults": template(),
            "loop": template("-f", str(loop_values)),
            "every option": template(*ALL_OPTIONS),
        }
    except subprocess.CalledProcessError as e:
        tally.record("helm template", [e.stderr.strip()])
        print(f"{tally.passed} passed, {tally.failed} failed")
        return 1
    finally:
        loop_values.unlink()
    tally.record("helm template", [])
    for label, objs in renders.items():
        rendering_problems(label, objs, tally)

    default = cm.render(cm.DEPLOY / "overlays/default")
    tally.record("chart defaults = overlay default (objects)", diff_objects(default, renders["defaults"]))
    tally.record("chart defaults = overlay default (node config)", config_problems(default, renders["defaults"]))
    loop = cm.render(cm.DEPLOY / "overlays/loop")
    tally.record("chart loop values = overlay loop (node config)", config_problems(loop, renders["loop"]))
    tally.record("chart loop values = overlay loop (objects)", diff_objects(loop, renders["loop"]))
    # Every option against default + every component.
    components = default
    for name in ("podmonitor", "prometheusrule", "gke-critical-quota", "openshift", "selinux-mount"):
        extra = [o for o in with_component(name) if key(o) not in {key(d) for d in default}]
        components = components + extra
        if name == "selinux-mount":
            csidriver = next(o for o in with_component(name) if o.get("kind") == "CSIDriver")
            components = [csidriver if o.get("kind") == "CSIDriver" else o for o in components]
    tally.record("chart every option = overlay default + every component",
                 diff_objects(components, renders["every option"]))

    # Another kubelet directory: every kubelet path of the node pod follows it.
    moved = template("--set", "kubeletDir=/data/kubelet")
    text = yaml.safe_dump_all(moved)
    ds = next(o for o in moved if key(o)[0] == "DaemonSet")
    driver = cm.container(ds, cm.DRIVER_CONTAINER)
    problems = [f"{cm.KUBELET_ROOT} still appears in the output"] if cm.KUBELET_ROOT in text else []
    if cm.flag_value(driver["args"], "--path-root") != "/data/kubelet":
        problems.append("driver --path-root does not follow kubeletDir")
    bidi = {m["mountPath"] for m in driver["volumeMounts"] if m.get("mountPropagation") == "Bidirectional"}
    if bidi != {"/data/kubelet/pods", "/data/kubelet/plugins/kubernetes.io/csi"}:
        problems.append(f"Bidirectional mounts are {sorted(bidi)}")
    tally.record("chart kubeletDir moves every kubelet path", problems)

    bad = cm.DEPLOY / ".bad-values.yaml"
    try:
        # The good class alone must pass, so each refusal below is the bad key's doing.
        bad.write_text("nodeConfig:\n  deviceClasses:\n" + GOOD_CLASS)
        r = helm("template", RELEASE, str(CHART), "-f", str(bad), check=False)
        tally.record("values schema accepts a minimal device class", [] if r.returncode == 0 else [r.stderr.strip()])
        for what, values in BAD_VALUES:
            bad.write_text(values)
            r = helm("template", RELEASE, str(CHART), "-f", str(bad), check=False)
            tally.record(f"values schema refuses {what}", [] if r.returncode != 0 else ["helm template accepted it"])
    finally:
        bad.unlink(missing_ok=True)

    failures = []
    if diff_objects(default, renders["defaults"]):
        failures.append("the diff fails on the unbroken chart")
    for what, breakage in SELF_TEST:
        broken = copy.deepcopy(renders["defaults"])
        breakage(broken)
        if not diff_objects(default, broken):
            failures.append(f"the diff did not report: {what}")
    print(f"  self-test: {len(SELF_TEST)} breakages of the chart's output: {len(failures)} not caught")
    tally.record("chart self-test", failures)
    print(f"{tally.passed} passed, {tally.failed} failed")
    return 0 if tally.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
