//! The PV annotation model of re-tiering: reading, generations, what a waiting request
//! makes of each state, and the patches.

use std::collections::BTreeMap;

use iops_controller::keys;

use super::*;

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn batch() -> BTreeMap<String, String> {
    map(&[(keys::TIER, "batch")])
}

fn state(pairs: &[(&str, &str)]) -> PvState {
    PvState::of(Some(&map(pairs))).unwrap()
}

#[test]
fn no_annotations_is_no_request_and_generation_one_next() {
    let s = PvState::of(None).unwrap();
    assert_eq!(s, PvState::default());
    assert_eq!(s.pending(), None);
    assert_eq!(s.next_generation(), 1);
}

#[test]
fn a_recorded_request_is_pending_until_applied_or_refused() {
    let p = encode_parameters(&batch());
    let s = state(&[
        (keys::DESIRED_PARAMETERS, &p),
        (keys::DESIRED_GENERATION, "3"),
        (keys::DESIRED_BY, "VolumeAttributesClass iolane-batch"),
        (keys::APPLIED_GENERATION, "2"),
    ]);
    let d = s.pending().expect("pending");
    assert_eq!(d.generation, 3);
    assert_eq!(d.parameters, batch());
    assert_eq!(d.by.as_deref(), Some("VolumeAttributesClass iolane-batch"));
    assert_eq!(s.next_generation(), 4);

    let applied = state(&[
        (keys::DESIRED_PARAMETERS, &p),
        (keys::DESIRED_GENERATION, "3"),
        (keys::APPLIED_GENERATION, "3"),
    ]);
    assert_eq!(applied.pending(), None);
    let refused = state(&[
        (keys::DESIRED_PARAMETERS, &p),
        (keys::DESIRED_GENERATION, "3"),
        (keys::REFUSED_GENERATION, "3: tier \"gold\" is not defined"),
    ]);
    assert_eq!(refused.pending(), None);
    assert_eq!(
        refused.refused,
        Some((3, "tier \"gold\" is not defined".to_owned()))
    );
}

#[test]
fn malformed_annotations_are_named() {
    let e = PvState::of(Some(&map(&[(keys::APPLIED_GENERATION, "x")]))).unwrap_err();
    assert!(e.contains(keys::APPLIED_GENERATION), "{e}");
    let e = PvState::of(Some(&map(&[(keys::DESIRED_GENERATION, "1")]))).unwrap_err();
    assert!(e.contains("together"), "{e}");
    let e = PvState::of(Some(&map(&[
        (keys::DESIRED_GENERATION, "1"),
        (keys::DESIRED_PARAMETERS, "[1]"),
    ])))
    .unwrap_err();
    assert!(e.contains(keys::DESIRED_PARAMETERS), "{e}");
}

#[test]
fn a_waiting_request_sees_applied_refused_superseded_or_waits() {
    let p = encode_parameters(&batch());
    let recorded = |generation: &str, applied: &str| {
        state(&[
            (keys::DESIRED_PARAMETERS, &p),
            (keys::DESIRED_GENERATION, generation),
            (keys::APPLIED_GENERATION, applied),
        ])
    };
    assert_eq!(
        progress(&recorded("2", "1"), 2, &batch()),
        Progress::Waiting(2)
    );
    assert_eq!(
        progress(&recorded("2", "2"), 2, &batch()),
        Progress::Applied
    );
    // The same parameters recorded again later (A, B, A): wait for the later generation.
    assert_eq!(
        progress(&recorded("4", "3"), 2, &batch()),
        Progress::Waiting(4)
    );
    assert_eq!(
        progress(&recorded("4", "4"), 2, &batch()),
        Progress::Applied
    );
    // Other parameters replaced the request.
    let streaming = map(&[(keys::TIER, "streaming")]);
    assert_eq!(
        progress(&recorded("3", "3"), 2, &streaming),
        Progress::Superseded
    );
    assert_eq!(
        progress(&PvState::default(), 1, &batch()),
        Progress::Superseded
    );
    let refused = state(&[
        (keys::DESIRED_PARAMETERS, &p),
        (keys::DESIRED_GENERATION, "2"),
        (keys::REFUSED_GENERATION, "2: no such tier"),
    ]);
    assert_eq!(
        progress(&refused, 2, &batch()),
        Progress::Refused("no such tier".to_owned())
    );
}

#[test]
fn patches_carry_the_request_and_the_precondition() {
    let p = record_patch(Some("42"), 5, &batch(), Some("VolumeAttributesClass x"));
    assert_eq!(p["metadata"]["resourceVersion"], "42");
    let a = &p["metadata"]["annotations"];
    assert_eq!(a[keys::DESIRED_GENERATION], "5");
    assert_eq!(
        a[keys::DESIRED_PARAMETERS],
        r#"{"iolane.dev/tier":"batch"}"#
    );
    assert_eq!(a[keys::DESIRED_BY], "VolumeAttributesClass x");
    let ack = ack_patch(5);
    assert_eq!(
        ack["metadata"]["annotations"][keys::APPLIED_GENERATION],
        "5"
    );
    assert!(ack["metadata"]["annotations"][keys::REFUSED_GENERATION].is_null());
    let no = refuse_patch(5, "why");
    assert_eq!(
        no["metadata"]["annotations"][keys::REFUSED_GENERATION],
        "5: why"
    );
    // Keys sorted: the same map always encodes the same way.
    let two = map(&[(keys::WRITE_IOPS, "5"), (keys::TIER, "batch")]);
    assert_eq!(
        encode_parameters(&two),
        r#"{"iolane.dev/tier":"batch","iolane.dev/write-iops":"5"}"#
    );
}
