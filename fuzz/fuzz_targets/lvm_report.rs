//! LVM's JSON reports (`lvs`/`pvs --reportformat json`), which the lvm backend reads for
//! every pool and volume, and the iolane LV tags in them, from which it rebuilds each
//! volume after a restart. No panic; every tag value escapes and unescapes to itself; and
//! the tags of an LV that decode, encoded again from what they said, decode to the same.
//!
//! The input's first byte picks the report: even, `lvs`; odd, `pvs`.
#![no_main]

use csi_driver::backend::lvm::{report, tags};
use csi_driver::volume::{CapacityRange, CreateSpec};
use libfuzzer_sys::fuzz_target;

fn check_tags(lv_tags: &[String]) {
    for t in lv_tags {
        let round = tags::unescape(&tags::escape(t));
        assert_eq!(
            round.as_deref(),
            Some(t.as_str()),
            "escape round trip of {t:?}"
        );
        if let Some(plain) = tags::unescape(t) {
            assert_eq!(
                tags::escape(&plain),
                *t,
                "unescape is not escape's inverse on {t:?}"
            );
        }
    }
    if !tags::is_ours(lv_tags) {
        return;
    }
    let Ok(tagged) = tags::decode(lv_tags) else {
        return;
    };
    let spec = CreateSpec {
        id: "fuzz".to_owned(),
        name: tagged.name.clone(),
        range: CapacityRange {
            required: tagged.required,
            limit: 0,
        },
        size: 0,
        fs_type: tagged.fs_type,
        parameters: tagged.parameters.clone(),
        tier: tagged.tier.clone(),
        source: tagged.source.clone(),
    };
    // A value too long for one tag is refused by encode; anything else must come back.
    let Ok(again) = tags::encode(&spec) else {
        return;
    };
    let back = tags::decode(&again)
        .unwrap_or_else(|e| panic!("re-encoded tags {again:?} do not decode: {e}"));
    assert_eq!(back, tagged, "tag round trip of {lv_tags:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    if pick % 2 == 1 {
        let _ = report::parse_pvs(json);
        return;
    }
    let Ok(lvs) = report::parse_lvs(json) else {
        return;
    };
    for lv in &lvs {
        let _ = (lv.active(), lv.health(), lv.is_thin_pool());
        let _ = lv.is_thin_in(&lv.vg, &lv.pool);
        check_tags(&lv.tags);
    }
});
