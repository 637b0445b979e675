//! Unit tests of tier resolution: layer precedence, allowed tiers, unknown keys and
//! values, overrides, and the stored (string) form of a resolved tier.

use super::*;
use crate::tier::{TierConfig, TierSet};

const MAX: Limit = Limit::Max;
const fn n(v: u64) -> Limit {
    Limit::per_sec(v)
}

/// The built-ins plus `gold` (streaming) and `bronze` (batch).
fn tiers() -> TierSet {
    let config: TierConfig = toml::from_str(
        r#"
        gold = { priority = "streaming", read_iops = "max", write_iops = "max", read_bps = "max", write_bps = "max" }
        bronze = { priority = "batch", read_iops = 100, write_iops = 100, read_bps = 1048576, write_bps = 1048576 }
        "#,
    )
    .unwrap();
    TierSet::from_config(&config).unwrap()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn resolved(name: &str, priority: Priority, overrides: Overrides) -> ResolvedTier {
    ResolvedTier {
        name: name.to_owned(),
        priority,
        overrides,
    }
}

struct Case {
    what: &'static str,
    class: &'static [(&'static str, &'static str)],
    pvc: Option<&'static str>,
    vac: Option<&'static [(&'static str, &'static str)]>,
    want: Result<ResolvedTier, &'static str>,
}

/// The StorageClass parameters as the driver reads them: the tier keys deserialised,
/// an unknown `iolane.dev/` key refused with [`ClassTier::unknown_key`], the rest not
/// resolution's business.
fn class_of(map: &BTreeMap<String, String>) -> Result<ClassTier, ResolveError> {
    if let Some(k) = map
        .keys()
        .find(|k| k.starts_with(keys::PREFIX) && !keys::STORAGE_CLASS_KEYS.contains(&k.as_str()))
    {
        return Err(ClassTier::unknown_key(k));
    }
    let pairs = map.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    use serde::Deserialize;
    Ok(ClassTier::deserialize(serde::de::value::MapDeserializer::<
        _,
        serde::de::value::Error,
    >::new(pairs))
    .unwrap())
}

fn run(cases: Vec<Case>) {
    let tiers = tiers();
    for c in cases {
        let vac = c.vac.map(map);
        let got = class_of(&map(c.class))
            .and_then(|class| {
                resolve(
                    &tiers,
                    &Layers {
                        class: &class,
                        pvc_tier: c.pvc,
                        mutable_parameters: vac.as_ref(),
                    },
                )
            })
            .map_err(|e| e.to_string());
        assert_eq!(got, c.want.map_err(str::to_owned), "case: {}", c.what);
    }
}

const NONE: Overrides = Overrides {
    read_bps: None,
    write_bps: None,
    read_iops: None,
    write_iops: None,
};

#[test]
fn layers_in_order() {
    use Priority::{Batch, Streaming};
    run(vec![
        Case {
            what: "nothing set: the built-in default",
            class: &[],
            pvc: None,
            vac: None,
            want: Ok(resolved("batch", Batch, NONE)),
        },
        Case {
            what: "other keys are not ours",
            class: &[
                ("csi.storage.k8s.io/pvc/name", "data"),
                ("fsType", "xfs"),
                ("iolane.dev/device-class", "fast"),
                ("topology.iolane.dev/node", "n1"),
            ],
            pvc: None,
            vac: None,
            want: Ok(resolved("batch", Batch, NONE)),
        },
        Case {
            what: "class tier",
            class: &[("iolane.dev/tier", "streaming")],
            pvc: None,
            vac: None,
            want: Ok(resolved("streaming", Streaming, NONE)),
        },
        Case {
            what: "class overrides",
            class: &[
                ("iolane.dev/tier", "gold"),
                ("iolane.dev/read-iops", "500"),
                ("iolane.dev/write-bps", "max"),
            ],
            pvc: None,
            vac: None,
            want: Ok(resolved(
                "gold",
                Streaming,
                Overrides {
                    read_iops: Some(n(500)),
                    write_bps: Some(MAX),
                    ..NONE
                },
            )),
        },
        Case {
            what: "pvc picks an allowed tier and keeps the class caps",
            class: &[
                ("iolane.dev/tier", "batch"),
                ("iolane.dev/allowed-tiers", "bronze, streaming"),
                ("iolane.dev/write-iops", "300"),
            ],
            pvc: Some("streaming"),
            vac: None,
            want: Ok(resolved(
                "streaming",
                Streaming,
                Overrides {
                    write_iops: Some(n(300)),
                    ..NONE
                },
            )),
        },
        Case {
            what: "pvc naming the tier it already has needs no allowed-tiers",
            class: &[("iolane.dev/tier", "bronze")],
            pvc: Some("bronze"),
            vac: None,
            want: Ok(resolved("bronze", Batch, NONE)),
        },
        Case {
            what: "pvc naming the default tier",
            class: &[],
            pvc: Some("batch"),
            vac: None,
            want: Ok(resolved("batch", Batch, NONE)),
        },
        Case {
            what: "vac beats pvc and class, key by key",
            class: &[
                ("iolane.dev/allowed-tiers", "bronze"),
                ("iolane.dev/read-iops", "500"),
                ("iolane.dev/read-bps", "1000"),
            ],
            pvc: Some("bronze"),
            vac: Some(&[
                ("iolane.dev/tier", "gold"),
                ("iolane.dev/read-iops", "max"),
                ("iolane.dev/write-iops", "7"),
            ]),
            want: Ok(resolved(
                "gold",
                Streaming,
                Overrides {
                    read_iops: Some(MAX),
                    write_iops: Some(n(7)),
                    read_bps: Some(n(1000)),
                    ..NONE
                },
            )),
        },
        Case {
            what: "vac tier is not limited by allowed-tiers",
            class: &[("iolane.dev/allowed-tiers", "bronze")],
            pvc: None,
            vac: Some(&[("iolane.dev/tier", "streaming")]),
            want: Ok(resolved("streaming", Streaming, NONE)),
        },
        Case {
            what: "empty vac",
            class: &[("iolane.dev/tier", "gold")],
            pvc: None,
            vac: Some(&[]),
            want: Ok(resolved("gold", Streaming, NONE)),
        },
    ]);
}

#[test]
fn errors_name_the_key() {
    run(vec![
        Case {
            what: "unknown iolane.dev class key",
            class: &[("iolane.dev/tiers", "gold")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/tiers\"]: unknown key; known keys: iolane.dev/tier, \
                 iolane.dev/read-iops, iolane.dev/write-iops, iolane.dev/read-bps, \
                 iolane.dev/write-bps, iolane.dev/allowed-tiers, iolane.dev/device-class",
            ),
        },
        Case {
            what: "priority is not an input",
            class: &[("iolane.dev/priority", "streaming")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/priority\"]: unknown key; known keys: \
                 iolane.dev/tier, iolane.dev/read-iops, iolane.dev/write-iops, \
                 iolane.dev/read-bps, iolane.dev/write-bps, iolane.dev/allowed-tiers, \
                 iolane.dev/device-class",
            ),
        },
        Case {
            what: "unknown class tier",
            class: &[("iolane.dev/tier", "platinum")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/tier\"]: unknown tier \"platinum\"; this node \
                 knows batch, bronze, gold, streaming",
            ),
        },
        Case {
            what: "empty class tier",
            class: &[("iolane.dev/tier", "")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/tier\"]: unknown tier \"\"; this node knows \
                 batch, bronze, gold, streaming",
            ),
        },
        Case {
            what: "bad class override",
            class: &[("iolane.dev/read-iops", "0")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/read-iops\"]: must be a positive integer or \
                 \"max\", got \"0\"",
            ),
        },
        Case {
            what: "override of 1",
            class: &[("iolane.dev/read-bps", "1")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/read-bps\"]: 1 is refused by many kernels (Linux \
                 6.1 among them); use 2 or more, or \"max\"",
            ),
        },
        Case {
            what: "override with a unit",
            class: &[("iolane.dev/write-bps", "100Mi")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/write-bps\"]: must be a positive integer or \
                 \"max\", got \"100Mi\"",
            ),
        },
        Case {
            what: "allowed-tiers with an unknown tier",
            class: &[("iolane.dev/allowed-tiers", "gold,platinum")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/allowed-tiers\"]: unknown tier \"platinum\"; this \
                 node knows batch, bronze, gold, streaming",
            ),
        },
        Case {
            what: "allowed-tiers with an empty entry",
            class: &[("iolane.dev/allowed-tiers", "gold,,bronze")],
            pvc: None,
            vac: None,
            want: Err(
                "parameters[\"iolane.dev/allowed-tiers\"]: \"gold,,bronze\" has an empty \
                 entry; list tier names separated by ','",
            ),
        },
        Case {
            what: "pvc tier not in allowed-tiers",
            class: &[("iolane.dev/allowed-tiers", "bronze, batch")],
            pvc: Some("streaming"),
            vac: None,
            want: Err(
                "PVC annotations[\"iolane.dev/tier\"]: tier \"streaming\" is not allowed by \
                 the StorageClass, whose parameters[\"iolane.dev/allowed-tiers\"] lists only \
                 bronze, batch",
            ),
        },
        Case {
            what: "pvc tier without allowed-tiers",
            class: &[("iolane.dev/tier", "bronze")],
            pvc: Some("gold"),
            vac: None,
            want: Err(
                "PVC annotations[\"iolane.dev/tier\"]: tier \"gold\" is not allowed: the \
                 StorageClass sets no parameters[\"iolane.dev/allowed-tiers\"], so a PVC \
                 may not choose its tier",
            ),
        },
        Case {
            what: "unknown vac key, even outside iolane.dev",
            class: &[],
            pvc: None,
            vac: Some(&[("iops", "5")]),
            want: Err(
                "mutable_parameters[\"iops\"]: unknown key; known keys: iolane.dev/tier, \
                 iolane.dev/read-iops, iolane.dev/write-iops, iolane.dev/read-bps, \
                 iolane.dev/write-bps",
            ),
        },
        Case {
            what: "allowed-tiers is a class key only",
            class: &[],
            pvc: None,
            vac: Some(&[("iolane.dev/allowed-tiers", "gold")]),
            want: Err(
                "mutable_parameters[\"iolane.dev/allowed-tiers\"]: unknown key; known keys: \
                 iolane.dev/tier, iolane.dev/read-iops, iolane.dev/write-iops, \
                 iolane.dev/read-bps, iolane.dev/write-bps",
            ),
        },
        Case {
            what: "unknown vac tier",
            class: &[],
            pvc: None,
            vac: Some(&[("iolane.dev/tier", "Gold")]),
            want: Err(
                "mutable_parameters[\"iolane.dev/tier\"]: unknown tier \"Gold\"; this node \
                 knows batch, bronze, gold, streaming",
            ),
        },
        Case {
            what: "bad vac override",
            class: &[],
            pvc: None,
            vac: Some(&[("iolane.dev/write-iops", "-1")]),
            want: Err(
                "mutable_parameters[\"iolane.dev/write-iops\"]: must be a positive integer \
                 or \"max\", got \"-1\"",
            ),
        },
    ]);
}

#[test]
fn errors_expose_their_field() {
    let class = class_of(&map(&[("iolane.dev/read-iops", "x")])).unwrap();
    let layers = Layers {
        class: &class,
        pvc_tier: None,
        mutable_parameters: None,
    };
    let e = resolve(&tiers(), &layers).unwrap_err();
    assert_eq!(e.field(), "parameters[\"iolane.dev/read-iops\"]");
}

#[test]
fn limits_combine_tier_size_and_overrides() {
    let mut config: TierConfig = toml::from_str(
        r#"scaled = { priority = "batch", read_bps = "max", write_bps = "max", per_gib = { read_iops = 10, write_iops = 10 } }"#,
    )
    .unwrap();
    config.0.extend(
        toml::from_str::<TierConfig>(
            r#"huge = { priority = "batch", read_iops = 2, write_iops = 2, read_bps = 2, write_bps = 2 }"#,
        )
        .unwrap()
        .0,
    );
    let tiers = TierSet::from_config(&config).unwrap();
    let gib = crate::tier::GIB;
    let table = [
        ("batch", NONE, gib, "rbps=max wbps=max riops=max wiops=max"),
        (
            "batch",
            Overrides {
                read_iops: Some(MAX),
                write_bps: Some(n(5)),
                ..NONE
            },
            gib,
            "rbps=max wbps=5 riops=max wiops=max",
        ),
        (
            "scaled",
            NONE,
            30 * gib,
            "rbps=max wbps=max riops=300 wiops=300",
        ),
        (
            "scaled",
            Overrides {
                write_iops: Some(n(50)),
                ..NONE
            },
            30 * gib,
            "rbps=max wbps=max riops=300 wiops=50",
        ),
        (
            "huge",
            Overrides {
                read_iops: Some(n(u64::MAX)),
                read_bps: Some(n(u64::MAX)),
                ..NONE
            },
            gib,
            "rbps=max wbps=2 riops=max wiops=2",
        ),
    ];
    for (name, overrides, size, want) in table {
        let r = resolved(name, Priority::Batch, overrides);
        assert_eq!(
            r.limits_for(&tiers, size).unwrap().to_string(),
            want,
            "{name} {overrides:?}"
        );
    }
    assert_eq!(
        resolved("gone", Priority::Batch, NONE)
            .limits_for(&tiers, gib)
            .map_err(|e| e.to_string()),
        Err("tier \"gone\" is not defined on this node".to_owned())
    );
}

#[test]
fn stored_form_round_trips() {
    use Priority::{Batch, Streaming};
    let table = [
        (
            resolved("batch", Batch, NONE),
            map(&[
                ("iolane.dev/priority", "batch"),
                ("iolane.dev/tier", "batch"),
            ]),
        ),
        (
            resolved(
                "gold",
                Streaming,
                Overrides {
                    read_bps: Some(n(2)),
                    write_bps: Some(MAX),
                    read_iops: Some(n(u64::MAX)),
                    write_iops: Some(n(2000)),
                },
            ),
            map(&[
                ("iolane.dev/priority", "streaming"),
                ("iolane.dev/read-bps", "2"),
                ("iolane.dev/read-iops", "18446744073709551615"),
                ("iolane.dev/tier", "gold"),
                ("iolane.dev/write-bps", "max"),
                ("iolane.dev/write-iops", "2000"),
            ]),
        ),
    ];
    for (r, want) in table {
        let stored = r.to_map();
        assert_eq!(stored, want);
        assert_eq!(ResolvedTier::from_map(&stored), Ok(Some(r.clone())));
        // Among the rest of a volume_context.
        let mut context = stored.clone();
        context.extend(map(&[
            ("iolane.dev/backend", "lvm"),
            (
                "csi.storage.k8s.io/pod.uid",
                "0f5ad7b2-6c4e-4c36-9bd4-3f2f1b0e6a11",
            ),
        ]));
        assert_eq!(ResolvedTier::from_map(&context), Ok(Some(r)));
    }
    // What `resolve` returns stores and reads back too.
    let class = class_of(&map(&[
        ("iolane.dev/tier", "bronze"),
        ("iolane.dev/write-iops", "max"),
    ]))
    .unwrap();
    let r = resolve(
        &tiers(),
        &Layers {
            class: &class,
            pvc_tier: None,
            mutable_parameters: None,
        },
    )
    .unwrap();
    assert_eq!(ResolvedTier::from_map(&r.to_map()), Ok(Some(r)));
}

#[test]
fn stored_form_errors() {
    type Pairs = &'static [(&'static str, &'static str)];
    let table: [(Pairs, Result<Option<ResolvedTier>, &str>); 7] = [
        (&[], Ok(None)),
        (&[("iolane.dev/backend", "loop")], Ok(None)),
        (
            &[("iolane.dev/read-iops", "5")],
            Err("stored iolane.dev/read-iops: present without iolane.dev/tier"),
        ),
        (
            &[("iolane.dev/tier", "batch")],
            Err("stored iolane.dev/priority: missing"),
        ),
        (
            &[
                ("iolane.dev/tier", "batch"),
                ("iolane.dev/priority", "high"),
            ],
            Err("stored iolane.dev/priority: must be \"streaming\" or \"batch\", got \"high\""),
        ),
        (
            &[("iolane.dev/tier", "a/b"), ("iolane.dev/priority", "batch")],
            Err("stored iolane.dev/tier: \"a/b\" is not a tier name"),
        ),
        (
            &[
                ("iolane.dev/tier", "batch"),
                ("iolane.dev/priority", "batch"),
                ("iolane.dev/write-bps", "0"),
            ],
            Err("stored iolane.dev/write-bps: must be a positive integer or \"max\", got \"0\""),
        ),
    ];
    for (pairs, want) in table {
        assert_eq!(
            ResolvedTier::from_map(&map(pairs)).map_err(|e| e.to_string()),
            want.map_err(str::to_owned),
            "{pairs:?}"
        );
    }
}
