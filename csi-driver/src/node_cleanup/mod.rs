//! Node cleanup in `iolane controller` (`--node-cleanup`): what happens to the volumes of
//! a Node object that was deleted. This file owns the policy as pure functions over the API
//! objects (which PVs belong to a node, which PVC is bound to a PV, which finalizers go, the
//! patch that removes them, the Event texts); `run.rs` owns the watcher and the API calls.
//!
//! The policy (documented in `docs/runbooks.md`, "A dead node"): an iolane volume lives on
//! one node's disk, so once that node's Node object is gone (and stays gone for the grace
//! period) its data is treated as gone too. For each PV of the driver whose node affinity
//! is `topology.iolane.dev/node In [<node>]` (exactly that, in every term):
//! - a PV with reclaim policy `Retain` is left alone (an Event says so);
//! - otherwise the PVC bound to it (the claimRef's namespace and name, whose `volumeName`
//!   is the PV and whose UID matches) gets an Event, is deleted, and loses
//!   `kubernetes.io/pvc-protection` so it goes even while a dead pod still names it;
//! - then the PV gets an Event, is deleted, and loses
//!   `external-provisioner.volume.kubernetes.io/finalizer` and `kubernetes.io/pv-protection`
//!   (DeleteVolume could only be served by the gone node's csi-provisioner).
//!
//! In dry-run mode the same decisions are logged and written as Normal Events saying what
//! would be done; nothing is changed.

mod run;

use clap::ValueEnum;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::json;

pub use run::{Settings, run};

/// The topology key iolane's PVs are pinned with.
pub const TOPOLOGY_KEY: &str = "topology.iolane.dev/node";
/// The finalizer kube-controller-manager keeps on a PVC in use by a pod.
pub const PVC_PROTECTION: &str = "kubernetes.io/pvc-protection";
/// The finalizer kube-controller-manager keeps on a bound PV.
pub const PV_PROTECTION: &str = "kubernetes.io/pv-protection";
/// The finalizer csi-provisioner keeps on a PV until DeleteVolume succeeded.
pub const PROVISIONER_FINALIZER: &str = "external-provisioner.volume.kubernetes.io/finalizer";
/// The Event reason of everything node cleanup reports.
pub const REASON: &str = "NodeDeleted";

/// `--node-cleanup`: what the controller does about the volumes of a deleted node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Nothing: no watch, no Kubernetes client.
    Off,
    /// Log and write Events saying what would be deleted; change nothing.
    DryRun,
    /// Delete the PVCs and PVs (and their finalizers) and write Events.
    On,
}

/// What to do about one PV of a deleted node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Leave it: its reclaim policy keeps it.
    KeepRetained,
    /// Delete the PV, and first the PVC it names if that PVC is bound to it.
    Delete { claim: Option<ClaimRef> },
}

/// The namespace, name and (when recorded) UID of the claim a PV is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

/// The node a PV of `driver` is pinned to: every node selector term of its required node
/// affinity must hold exactly one expression, `TOPOLOGY_KEY In [node]`, with the same node.
/// `None` for other drivers and any other affinity (those are not iolane's to judge).
pub fn pv_node<'a>(pv: &'a PersistentVolume, driver: &str) -> Option<&'a str> {
    let spec = pv.spec.as_ref()?;
    if spec.csi.as_ref()?.driver != driver {
        return None;
    }
    let terms = &spec
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    let mut node = None;
    for term in terms {
        if term.match_fields.as_ref().is_some_and(|f| !f.is_empty()) {
            return None;
        }
        let [expr] = term.match_expressions.as_deref()? else {
            return None;
        };
        let values = expr.values.as_deref().unwrap_or_default();
        if expr.key != TOPOLOGY_KEY || expr.operator != "In" || values.len() != 1 {
            return None;
        }
        match node {
            None => node = Some(values[0].as_str()),
            Some(n) if n == values[0] => {}
            Some(_) => return None,
        }
    }
    node
}

/// The decision for a PV already known to be on a deleted node.
pub fn decide(pv: &PersistentVolume) -> Decision {
    let spec = pv.spec.as_ref();
    if spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref()) == Some("Retain") {
        return Decision::KeepRetained;
    }
    let claim = spec.and_then(|s| s.claim_ref.as_ref()).and_then(|r| {
        Some(ClaimRef {
            namespace: r.namespace.clone()?,
            name: r.name.clone()?,
            uid: r.uid.clone(),
        })
    });
    Decision::Delete { claim }
}

/// Whether `pvc` is the claim `claim` names and is bound to the PV `pv_name` (so deleting
/// it is about this volume, not about a new claim that reused the name).
pub fn claim_is_bound(pvc: &PersistentVolumeClaim, claim: &ClaimRef, pv_name: &str) -> bool {
    let meta = &pvc.metadata;
    meta.namespace.as_deref() == Some(claim.namespace.as_str())
        && meta.name.as_deref() == Some(claim.name.as_str())
        && claim
            .uid
            .as_deref()
            .is_none_or(|uid| meta.uid.as_deref() == Some(uid))
        && pvc.spec.as_ref().and_then(|s| s.volume_name.as_deref()) == Some(pv_name)
}

/// The finalizers node cleanup removes from a PVC.
pub const PVC_FINALIZERS: &[&str] = &[PVC_PROTECTION];
/// The finalizers node cleanup removes from a PV.
pub const PV_FINALIZERS: &[&str] = &[PROVISIONER_FINALIZER, PV_PROTECTION];

/// The merge patch that removes `remove` from `finalizers` and keeps the others, guarded by
/// `resource_version` (the API server answers 409 if the object changed meanwhile); `None`
/// when none of `remove` is there.
pub fn finalizer_patch(
    finalizers: &[String],
    resource_version: Option<&str>,
    remove: &[&str],
) -> Option<serde_json::Value> {
    if !finalizers.iter().any(|f| remove.contains(&f.as_str())) {
        return None;
    }
    let keep: Vec<&str> = finalizers
        .iter()
        .map(String::as_str)
        .filter(|f| !remove.contains(f))
        .collect();
    let mut metadata = json!({ "finalizers": keep });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    Some(json!({ "metadata": metadata }))
}

/// The Event note for a PVC of a deleted node.
pub fn pvc_note(mode: Mode, node: &str, pv_name: &str) -> String {
    let verb = if mode == Mode::On {
        "deleted"
    } else {
        "would delete"
    };
    format!(
        "node {node} was deleted and volume {pv_name} lived on its disk: iolane {verb} this \
         claim (removing {PVC_PROTECTION}) and its PV"
    )
}

/// The Event note for a PV of a deleted node.
pub fn pv_note(mode: Mode, node: &str, decision: &Decision) -> String {
    match (decision, mode) {
        (Decision::KeepRetained, _) => format!(
            "node {node} was deleted and this volume lived on its disk; its reclaim policy is \
             Retain, so iolane leaves it (delete it by hand once its data is written off)"
        ),
        (Decision::Delete { .. }, Mode::On) => format!(
            "node {node} was deleted and this volume lived on its disk: iolane deleted this PV \
             (removing {PROVISIONER_FINALIZER} and {PV_PROTECTION})"
        ),
        (Decision::Delete { .. }, _) => format!(
            "node {node} was deleted and this volume lived on its disk: iolane would delete \
             this PV (removing {PROVISIONER_FINALIZER} and {PV_PROTECTION})"
        ),
    }
}

#[cfg(test)]
mod tests;
