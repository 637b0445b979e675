//! Tests of the node cleanup policy: which PVs belong to a node, which PVC is bound, which
//! finalizers a patch removes, and the Event texts per mode.

use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use serde_json::json;

use super::*;

fn pv(driver: &str, terms: serde_json::Value, reclaim: &str) -> PersistentVolume {
    serde_json::from_value(json!({
        "metadata": {"name": "pvc-1"},
        "spec": {
            "csi": {"driver": driver, "volumeHandle": "h"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": terms}},
            "persistentVolumeReclaimPolicy": reclaim,
            "claimRef": {"namespace": "default", "name": "data", "uid": "u1"},
        }
    }))
    .unwrap()
}

fn term(key: &str, op: &str, values: &[&str]) -> serde_json::Value {
    json!({"matchExpressions": [{"key": key, "operator": op, "values": values}]})
}

#[test]
fn pv_node_takes_only_the_drivers_single_node_affinity() {
    let one = json!([term(TOPOLOGY_KEY, "In", &["n1"])]);
    assert_eq!(
        pv_node(
            &pv("csi.iolane.dev", one.clone(), "Delete"),
            "csi.iolane.dev"
        ),
        Some("n1")
    );
    assert_eq!(
        pv_node(&pv("other.dev", one, "Delete"), "csi.iolane.dev"),
        None
    );
    let two_same = json!([
        term(TOPOLOGY_KEY, "In", &["n1"]),
        term(TOPOLOGY_KEY, "In", &["n1"])
    ]);
    assert_eq!(
        pv_node(&pv("csi.iolane.dev", two_same, "Delete"), "csi.iolane.dev"),
        Some("n1")
    );
    for terms in [
        json!([
            term(TOPOLOGY_KEY, "In", &["n1"]),
            term(TOPOLOGY_KEY, "In", &["n2"])
        ]),
        json!([term(TOPOLOGY_KEY, "In", &["n1", "n2"])]),
        json!([term(TOPOLOGY_KEY, "NotIn", &["n1"])]),
        json!([term("kubernetes.io/hostname", "In", &["n1"])]),
        json!([]),
        json!([{"matchExpressions": [
            {"key": TOPOLOGY_KEY, "operator": "In", "values": ["n1"]},
            {"key": "zone", "operator": "In", "values": ["a"]},
        ]}]),
        json!([{"matchExpressions": [{"key": TOPOLOGY_KEY, "operator": "In", "values": ["n1"]}],
                "matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}]),
    ] {
        assert_eq!(
            pv_node(
                &pv("csi.iolane.dev", terms.clone(), "Delete"),
                "csi.iolane.dev"
            ),
            None,
            "{terms}"
        );
    }
    let no_affinity: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "x"}, "spec": {"csi": {"driver": "csi.iolane.dev", "volumeHandle": "h"}}
    }))
    .unwrap();
    assert_eq!(pv_node(&no_affinity, "csi.iolane.dev"), None);
}

#[test]
fn decide_keeps_retained_and_deletes_with_the_claim() {
    let terms = json!([term(TOPOLOGY_KEY, "In", &["n1"])]);
    assert_eq!(
        decide(&pv("csi.iolane.dev", terms.clone(), "Retain")),
        Decision::KeepRetained
    );
    assert_eq!(
        decide(&pv("csi.iolane.dev", terms, "Delete")),
        Decision::Delete {
            claim: Some(ClaimRef {
                namespace: "default".into(),
                name: "data".into(),
                uid: Some("u1".into()),
            })
        }
    );
    let unbound: PersistentVolume = serde_json::from_value(json!({
        "metadata": {"name": "x"}, "spec": {"persistentVolumeReclaimPolicy": "Delete"}
    }))
    .unwrap();
    assert_eq!(decide(&unbound), Decision::Delete { claim: None });
}

fn pvc(uid: &str, volume: &str) -> PersistentVolumeClaim {
    serde_json::from_value(json!({
        "metadata": {"namespace": "default", "name": "data", "uid": uid},
        "spec": {"volumeName": volume},
    }))
    .unwrap()
}

#[test]
fn claim_must_match_uid_and_volume() {
    let claim = ClaimRef {
        namespace: "default".into(),
        name: "data".into(),
        uid: Some("u1".into()),
    };
    assert!(claim_is_bound(&pvc("u1", "pvc-1"), &claim, "pvc-1"));
    assert!(
        !claim_is_bound(&pvc("u2", "pvc-1"), &claim, "pvc-1"),
        "a new claim reusing the name"
    );
    assert!(
        !claim_is_bound(&pvc("u1", "pvc-2"), &claim, "pvc-1"),
        "bound elsewhere"
    );
    let any_uid = ClaimRef {
        uid: None,
        ..claim.clone()
    };
    assert!(claim_is_bound(&pvc("u9", "pvc-1"), &any_uid, "pvc-1"));
    let other_ns = ClaimRef {
        namespace: "prod".into(),
        ..claim
    };
    assert!(!claim_is_bound(&pvc("u1", "pvc-1"), &other_ns, "pvc-1"));
}

#[test]
fn finalizer_patch_removes_only_the_named_ones() {
    let owned = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let pv_fins = owned(&[PROVISIONER_FINALIZER, "example.com/keep", PV_PROTECTION]);
    assert_eq!(
        finalizer_patch(&pv_fins, Some("42"), PV_FINALIZERS),
        Some(json!({"metadata": {"finalizers": ["example.com/keep"], "resourceVersion": "42"}}))
    );
    assert_eq!(
        finalizer_patch(&owned(&[PVC_PROTECTION]), None, PVC_FINALIZERS),
        Some(json!({"metadata": {"finalizers": []}}))
    );
    // The PVC list does not touch PV finalizers and the reverse.
    assert_eq!(
        finalizer_patch(&owned(&[PV_PROTECTION]), Some("1"), PVC_FINALIZERS),
        None
    );
    assert_eq!(
        finalizer_patch(&owned(&[PVC_PROTECTION]), Some("1"), PV_FINALIZERS),
        None
    );
    assert_eq!(finalizer_patch(&[], Some("1"), PV_FINALIZERS), None);
}

#[test]
fn notes_say_would_only_in_dry_run() {
    let delete = Decision::Delete { claim: None };
    assert!(pvc_note(Mode::DryRun, "n1", "pvc-1").contains("would delete"));
    assert!(!pvc_note(Mode::On, "n1", "pvc-1").contains("would"));
    assert!(pv_note(Mode::DryRun, "n1", &delete).contains("would delete this PV"));
    let on = pv_note(Mode::On, "n1", &delete);
    assert!(!on.contains("would") && on.contains("deleted this PV") && on.contains("n1"));
    assert!(pv_note(Mode::On, "n1", &Decision::KeepRetained).contains("Retain"));
}
