//! The tier model's tests: caps, limits, priorities, tiers scaled by size, and the node
//! config's `[tiers]` tables with their errors.

use serde::Deserialize;

use super::*;

const fn nz(n: u64) -> NonZeroU64 {
    match NonZeroU64::new(n) {
        Some(v) => v,
        None => NonZeroU64::MIN,
    }
}

fn limits(rbps: Limit, wbps: Limit, riops: Limit, wiops: Limit) -> Limits {
    Limits {
        read_bps: rbps,
        write_bps: wbps,
        read_iops: riops,
        write_iops: wiops,
    }
}

const MAX: Limit = Limit::Max;
const fn n(v: u64) -> Limit {
    Limit::per_sec(v)
}

/// Parses `text` as the `tiers` section of a node config and builds the set.
fn tiers(text: &str) -> Result<TierSet, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Node {
        #[serde(default)]
        tiers: TierConfig,
    }
    let node: Node = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    TierSet::from_config(&node.tiers).map_err(|e| e.to_string())
}

#[test]
fn limit_strings() {
    let ok = [
        ("max", MAX),
        ("2", n(2)),
        ("2000", n(2000)),
        ("18446744073709551615", n(u64::MAX)),
    ];
    for (text, want) in ok {
        assert_eq!(text.parse::<Limit>(), Ok(want), "{text}");
        assert_eq!(want.to_string(), text);
    }
    for bad in [
        "",
        "0",
        "00",
        "-1",
        "+5",
        " 5",
        "5 ",
        "1.5",
        "1e3",
        "200Mi",
        "Max",
        "MAX",
        "unlimited",
        "18446744073709551616",
    ] {
        assert_eq!(
            bad.parse::<Limit>().map_err(|e| e.to_string()),
            Err(format!(
                "must be a positive integer or \"max\", got {bad:?}"
            )),
            "{bad:?}"
        );
    }
    assert_eq!(
        "1".parse::<Limit>().map_err(|e| e.to_string()),
        Err(
            "1 is refused by many kernels (Linux 6.1 among them); use 2 or more, or \"max\""
                .to_owned()
        )
    );
}

#[test]
fn builtin_tiers() {
    let set = TierSet::builtin();
    assert_eq!(set.names().collect::<Vec<_>>(), ["batch", "streaming"]);
    let streaming = set.get("streaming").unwrap();
    assert_eq!(streaming.priority, Priority::Streaming);
    assert_eq!(streaming.limits_for(100 * GIB), Limits::UNLIMITED);
    let batch = set.get("batch").unwrap();
    assert_eq!(batch.priority, Priority::Batch);
    // No fixed cap: the priority controllers give it its share of each device.
    for size in [1, GIB, 10_000 * GIB] {
        assert_eq!(batch.limits_for(size), Limits::UNLIMITED);
    }
    assert_eq!(set.get(keys::DEFAULT_TIER), Some(batch));
    assert!(Priority::Streaming > Priority::Batch);
    assert_eq!(TierSet::default(), set);
    assert_eq!(tiers(""), Ok(set));
}

#[test]
fn config_adds_and_replaces_tiers() {
    let set = tiers(
        r#"
        [tiers.batch]
        priority = "batch"
        read_iops = 500
        write_iops = 400
        read_bps = "max"
        write_bps = 104857600

        [tiers.gold-1]
        priority = "streaming"
        read_iops = "max"
        write_iops = "max"
        read_bps = "max"
        write_bps = 2
        "#,
    )
    .unwrap();
    assert_eq!(
        set.names().collect::<Vec<_>>(),
        ["batch", "gold-1", "streaming"]
    );
    assert_eq!(
        set.get("batch").unwrap().limits_for(GIB),
        limits(MAX, n(104_857_600), n(500), n(400))
    );
    let gold = set.get("gold-1").unwrap();
    assert_eq!(gold.priority, Priority::Streaming);
    assert_eq!(gold.limits_for(GIB), limits(MAX, n(2), MAX, MAX));
    assert_eq!(set.get("streaming"), Some(&Tier::streaming()));
}

#[test]
fn per_gib_scaling() {
    let set = tiers(
        r#"
        [tiers.scaled]
        priority = "batch"
        read_bps = "max"
        write_bps = 1048576
        per_gib = { read_iops = 20, write_iops = 10, floor_gib = 10, ceiling_gib = 500 }

        [tiers.open]
        priority = "batch"
        read_iops = 100
        write_iops = 100
        read_bps = 100
        per_gib = { write_bps = 3000000000 }
        "#,
    )
    .unwrap();
    let scaled = set.get("scaled").unwrap();
    assert_eq!(
        scaled.scaling,
        Scaling {
            floor_gib: nz(10),
            ceiling_gib: Some(nz(500))
        }
    );
    // (size, read_iops, write_iops)
    let table = [
        (0, 200, 100),
        (1, 200, 100),
        (4 * GIB, 200, 100),
        (10 * GIB, 200, 100),
        (10 * GIB + GIB / 2, 210, 105),
        (10 * GIB + 1, 200, 100), // rounded down
        (100 * GIB, 2000, 1000),
        (500 * GIB, 10_000, 5000),
        (2048 * GIB, 10_000, 5000),
        (u64::MAX, 10_000, 5000),
    ];
    for (size, r, w) in table {
        assert_eq!(
            scaled.limits_for(size),
            limits(MAX, n(1_048_576), n(r), n(w)),
            "size {size}"
        );
    }
    // Defaults: floor 1 GiB, no ceiling; huge products saturate to max.
    let open = set.get("open").unwrap();
    assert_eq!(open.scaling, Scaling::default());
    // A scaled cap is at least MIN_CAP.
    let one = Tier {
        read_iops: Rate::PerGib(nz(1)),
        ..Tier::streaming()
    };
    assert_eq!(one.limits_for(GIB).read_iops, n(2));
    assert_eq!(one.limits_for(3 * GIB).read_iops, n(3));
    let table = [
        (0, n(3_000_000_000)),
        (GIB / 2, n(3_000_000_000)),
        (3 * GIB, n(9_000_000_000)),
        (u64::MAX, MAX),
    ];
    for (size, wbps) in table {
        assert_eq!(
            open.limits_for(size),
            limits(n(100), wbps, n(100), n(100)),
            "size {size}"
        );
    }
}

#[test]
fn iops_past_the_kernels_32_bits_mean_max() {
    let t = Tier::flat(
        "huge",
        limits(
            n(u64::MAX),
            n(u64::MAX - 1),
            n(4_294_967_295),
            n(4_294_967_294),
        ),
        Priority::Batch,
    );
    assert_eq!(
        t.limits_for(GIB),
        limits(MAX, n(u64::MAX - 1), MAX, n(4_294_967_294))
    );
    let per_gib = Tier {
        read_iops: Rate::PerGib(nz(4_000_000_000)),
        ..t
    };
    assert_eq!(per_gib.limits_for(GIB).read_iops, n(4_000_000_000));
    assert_eq!(per_gib.limits_for(2 * GIB).read_iops, MAX);
    assert!(Limits::UNLIMITED.is_unlimited());
    assert!(limits(n(u64::MAX), MAX, n(u64::from(u32::MAX)), MAX).is_unlimited());
    assert!(!limits(MAX, MAX, MAX, n(1)).is_unlimited());
}

#[test]
fn config_errors_name_the_field() {
    let full = r#"priority = "batch"
        read_iops = 2
        write_iops = 2
        read_bps = 2
        write_bps = 2"#;
    let with = |extra: &str| format!("[tiers.t]\n{}\n{extra}", full);
    let without = |key: &str, extra: &str| {
        let kept: Vec<&str> = full
            .lines()
            .filter(|l| !l.trim_start().starts_with(&format!("{key} ")))
            .collect();
        format!("[tiers.t]\n{}\n{extra}", kept.join("\n"))
    };
    let positive_or_max = "must be a positive integer or \"max\", got";
    let table: Vec<(String, String)> = vec![
        (
            without("read_iops", "read_iops = 0"),
            format!("tiers.t.read_iops: {positive_or_max} 0"),
        ),
        (
            without("read_iops", "read_iops = 1"),
            "tiers.t.read_iops: 1 is refused by many kernels (Linux 6.1 among them); use 2 \
             or more, or \"max\""
                .to_owned(),
        ),
        (
            without("write_iops", "write_iops = -5"),
            format!("tiers.t.write_iops: {positive_or_max} -5"),
        ),
        (
            without("read_bps", "read_bps = \"unlimited\""),
            format!("tiers.t.read_bps: {positive_or_max} \"unlimited\""),
        ),
        (
            without("write_bps", "write_bps = \"100\""),
            format!("tiers.t.write_bps: {positive_or_max} \"100\""),
        ),
        (
            without("read_iops", "read_iops = 1.5"),
            format!("tiers.t.read_iops: {positive_or_max} the float 1.5"),
        ),
        (
            without("read_iops", "read_iops = true"),
            format!("tiers.t.read_iops: {positive_or_max} the boolean true"),
        ),
        (
            without("read_iops", "read_iops = [1]"),
            format!("tiers.t.read_iops: {positive_or_max} an array"),
        ),
        (
            without("read_iops", "read_iops = { a = 1 }"),
            format!("tiers.t.read_iops: {positive_or_max} a table"),
        ),
        (
            without("write_bps", ""),
            "tiers.t.write_bps: missing; must be a positive integer or \"max\" (or set \
             per_gib.write_bps)"
                .to_owned(),
        ),
        (
            without("priority", ""),
            "tiers.t.priority: missing; must be \"streaming\" or \"batch\"".to_owned(),
        ),
        (
            without("priority", "priority = \"gold\""),
            "tiers.t.priority: must be \"streaming\" or \"batch\", got \"gold\"".to_owned(),
        ),
        (
            without("priority", "priority = 1"),
            "tiers.t.priority: must be \"streaming\" or \"batch\", got 1".to_owned(),
        ),
        (
            with("per_gib = { read_iops = 5 }"),
            "tiers.t.read_iops: also set as per_gib.read_iops; give one or the other".to_owned(),
        ),
        (
            without("read_iops", "per_gib = { read_iops = \"max\" }"),
            "tiers.t.per_gib.read_iops: must be a positive integer, got \"max\"".to_owned(),
        ),
        (
            without("read_iops", "per_gib = { read_iops = 0 }"),
            "tiers.t.per_gib.read_iops: must be a positive integer, got 0".to_owned(),
        ),
        (
            with("per_gib = { floor_gib = 10 }"),
            "tiers.t.per_gib: scales nothing; set at least one of read_iops, write_iops, \
             read_bps, write_bps"
                .to_owned(),
        ),
        (
            without("read_iops", "per_gib = { read_iops = 5, floor_gib = 0 }"),
            "tiers.t.per_gib.floor_gib: must be a positive integer, got 0".to_owned(),
        ),
        (
            without(
                "read_iops",
                "per_gib = { read_iops = 5, floor_gib = 10, ceiling_gib = 9 }",
            ),
            "tiers.t.per_gib.ceiling_gib: 9 is below per_gib.floor_gib 10".to_owned(),
        ),
        (
            format!("[tiers.Gold]\n{full}"),
            "tiers.Gold: a tier name must be 1-63 lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
                .to_owned(),
        ),
    ];
    for (text, want) in table {
        assert_eq!(tiers(&text).unwrap_err(), want, "config:\n{text}");
    }
    // Unknown keys are serde's to refuse; the message names them.
    for (extra, key) in [
        ("read_iop = 1", "read_iop"),
        ("per_gib = { floor = 1 }", "floor"),
    ] {
        let e = tiers(&with(extra)).unwrap_err();
        assert!(e.contains(&format!("unknown field `{key}`")), "{e}");
    }
}

#[test]
fn tier_names() {
    for ok in ["a", "batch", "gold-1", "0", &"a".repeat(63)] {
        assert!(valid_tier_name(ok), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "Gold",
        "a_b",
        "a.b",
        "a b",
        "ä",
        &"a".repeat(64),
    ] {
        assert!(!valid_tier_name(bad), "{bad}");
    }
}

#[test]
fn priority_strings() {
    for p in [Priority::Streaming, Priority::Batch] {
        assert_eq!(p.as_str().parse(), Ok(p));
    }
    assert_eq!(
        "Streaming".parse::<Priority>().map_err(|e| e.to_string()),
        Err("must be \"streaming\" or \"batch\", got \"Streaming\"".to_owned())
    );
}
