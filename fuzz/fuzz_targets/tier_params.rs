//! Tier parameters: CreateVolume `parameters` (the StorageClass's), the PVC's tier
//! annotation, `mutable_parameters` (the VolumeAttributesClass's) and a stored tier read
//! back from `volume_context` or LV tags. No panic; every refusal is INVALID_ARGUMENT
//! naming a key; what parses prints back to itself (`Parameters::to_map`,
//! `ResolvedTier::to_map`, each cap and priority's `Display`), and a resolved tier gives
//! caps for any volume size.
//!
//! Input: lines of `key=value`; a line `--` starts the next map (parameters, then
//! mutable_parameters, then a stored tier); a line `pvc=NAME` sets the PVC annotation.
#![no_main]

use std::collections::BTreeMap;

use csi_driver::error::Error;
use csi_driver::grpc::error_codes::code_of;
use csi_driver::tiering::Tiering;
use csi_driver::volume::Parameters;
use iops_controller::{Layers, Limit, PodUid, Priority, ResolvedTier, TierConfig, TierSet};
use libfuzzer_sys::fuzz_target;

/// A node's tiers: the built-ins and one scaled per GiB, so resolution meets every kind.
const TIERS: &str = r#"
[gold]
priority = "batch"
write_iops = 1000
read_bps = "max"
write_bps = 104857600
per_gib = { read_iops = 20, floor_gib = 10, ceiling_gib = 500 }
"#;

const SIZES: [u64; 4] = [0, 1 << 30, 1 << 40, i64::MAX as u64];

fn tiers() -> TierSet {
    let config: TierConfig = toml::from_str(TIERS).unwrap_or_else(|e| panic!("{e}"));
    TierSet::from_config(&config).unwrap_or_else(|e| panic!("{e}"))
}

fn invalid_argument(what: &str, e: Error) {
    let code = code_of(&e);
    assert_eq!(
        code,
        tonic::Code::InvalidArgument,
        "{what}: {e} is {code:?}"
    );
    let Error::InvalidArgument { field, reason } = &e else {
        return;
    };
    assert!(!field.is_empty() && !reason.is_empty(), "{what}: {e}");
}

fn round_trip_stored(rt: &ResolvedTier, tiers: &TierSet) {
    let back = ResolvedTier::from_map(&rt.to_map())
        .unwrap_or_else(|e| panic!("stored form of {rt:?} does not read back: {e}"));
    assert_eq!(back.as_ref(), Some(rt), "stored tier round trip");
    for size in SIZES {
        let _ = rt.limits_for(tiers, size);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut maps: [BTreeMap<String, String>; 3] = Default::default();
    let mut at = 0;
    let mut pvc = None;
    for line in text.split('\n') {
        if line == "--" {
            at = (at + 1).min(2);
        } else if let Some(name) = line.strip_prefix("pvc=") {
            pvc = Some(name.to_owned());
        } else if let Some((k, v)) = line.split_once('=') {
            maps[at].insert(k.to_owned(), v.to_owned());
        }
    }
    let [params, mutable, stored] = &maps;
    let tiers = tiers();

    // Every value, as each typed value the tier keys hold.
    for v in maps.iter().flat_map(|m| m.values()) {
        if let Ok(limit) = v.parse::<Limit>() {
            assert_eq!(
                limit.to_string().parse::<Limit>().ok(),
                Some(limit),
                "{v:?}"
            );
        }
        if let Ok(p) = v.parse::<Priority>() {
            assert_eq!(p.to_string().parse::<Priority>().ok(), Some(p), "{v:?}");
        }
        if let Ok(uid) = PodUid::parse(v) {
            assert_eq!(PodUid::parse(&uid.to_string()).ok(), Some(uid), "{v:?}");
        }
    }

    let tiering = Tiering::new(tiers.clone(), None);
    if let Err(e) = tiering.check_mutable(mutable) {
        invalid_argument("mutable_parameters", e);
    }
    match Parameters::parse(params) {
        Err(e) => invalid_argument("parameters", e),
        Ok(p) => {
            let again = Parameters::parse(&p.to_map())
                .unwrap_or_else(|e| panic!("printed parameters of {p:?} do not parse: {e}"));
            assert_eq!(again, p, "parameters round trip");
            let _ = Parameters::parse_storage_class(params);
            let layers = Layers {
                class: &p.tier,
                pvc_tier: pvc.as_deref(),
                mutable_parameters: (!mutable.is_empty()).then_some(mutable),
            };
            match iops_controller::resolve(&tiers, &layers) {
                Ok(rt) => round_trip_stored(&rt, &tiers),
                Err(e) => invalid_argument("resolve", e.into()),
            }
        }
    }
    if let Ok(Some(rt)) = ResolvedTier::from_map(stored) {
        round_trip_stored(&rt, &tiers);
    }
});
