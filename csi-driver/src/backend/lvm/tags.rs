//! The LV tags that make a thin LV an iolane volume: LVM metadata is the only state store,
//! so everything needed to rebuild a [`Volume`] is written here, by the one `lvcreate`
//! that creates the LV (or the one `lvchange` that makes a spare the volume: a spare
//! carries only `iolane.dev/v=1` and `iolane.dev/spare=ext4|xfs`).
//!
//! ```text
//! iolane.dev/v=1                       format version
//! iolane.dev/name=<escaped CSI name>
//! iolane.dev/required=<bytes>          capacity_range.required_bytes at creation (0 = unset)
//! iolane.dev/fs=ext4|xfs               only for volumes created for a filesystem
//! iolane.dev/p/<escaped key>=<escaped value>   one per CreateVolume parameter
//! iolane.dev/t/<escaped key>=<escaped value>   the resolved tier, one per entry of
//!                                      `ResolvedTier::to_map` (tier, priority, overrides);
//!                                      read back typed (`ResolvedTier::from_map`)
//! iolane.dev/src=snapshot/<id>|volume/<id>     only for a clone: what it was made from
//! ```
//!
//! A snapshot is a thin LV named by its snapshot ID (`iolsnap-` + 32 hex digits), made by
//! one `lvcreate -s` with all of its tags:
//!
//! ```text
//! iolane.dev/v=1
//! iolane.dev/snap=<escaped CSI snapshot name>
//! iolane.dev/source=<source volume ID>
//! iolane.dev/created=<nanoseconds since the Unix epoch>
//! iolane.dev/size=<bytes>              the source's size when it was taken
//! iolane.dev/fs=ext4|xfs               the source's filesystem, if it has one
//! ```
//!
//! LVM tags may only hold `[A-Za-z0-9_+.-/=!:&#]` and at most 1024 bytes. Values are
//! escaped: `[A-Za-z0-9_+.-/]` stay as they are (so typical names read plainly in `lvs -o
//! tags`), every other byte becomes `:` and two lowercase hex digits.

use std::collections::BTreeMap;

use iops_controller::ResolvedTier;

use crate::error::{Error, Result};
use crate::os::FsType;
use crate::validate;
use crate::volume::{ContentSource, CreateSpec, Parameters, Snapshot, SnapshotSpec};

/// Every iolane tag starts with this.
pub const PREFIX: &str = "iolane.dev/";
/// The tag format this code writes and reads.
pub const VERSION: u32 = 1;
/// LVM's limit on the length of one tag.
pub const MAX_TAG_LEN: usize = 1024;

/// What the tags of one LV say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    pub name: String,
    pub required: u64,
    pub fs_type: Option<FsType>,
    pub parameters: Parameters,
    /// The resolved tier; `None` when the LV carries none.
    pub tier: Option<ResolvedTier>,
    /// What a clone was made from.
    pub source: Option<ContentSource>,
}

fn safe(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-' | b'/')
}

/// Escapes `s` into LVM's tag characters.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if safe(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!(":{b:02x}"));
        }
    }
    out
}

/// Reverses [`escape`]; `None` for anything [`escape`] cannot have produced.
pub fn unescape(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b':' {
            let hex = s.get(i + 1..i + 3)?;
            if !hex
                .bytes()
                .all(|h| h.is_ascii_digit() || (b'a'..=b'f').contains(&h))
            {
                return None;
            }
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if safe(byte) {
                return None;
            }
            out.push(byte);
            i += 3;
        } else if safe(b[i]) {
            out.push(b[i]);
            i += 1;
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

fn tag(field: String, key: &str, value: &str) -> Result<String> {
    let t = format!("{PREFIX}{key}={value}");
    if t.len() > MAX_TAG_LEN {
        return Err(Error::invalid(
            field,
            format!(
                "is too long to store in an lvm tag ({} bytes escaped, the limit is {MAX_TAG_LEN})",
                t.len()
            ),
        ));
    }
    Ok(t)
}

/// The tags of a new volume. A value too long for a tag is INVALID_ARGUMENT naming it.
pub fn encode(spec: &CreateSpec) -> Result<Vec<String>> {
    let mut tags = vec![
        format!("{PREFIX}v={VERSION}"),
        tag("name".to_owned(), "name", &escape(&spec.name))?,
        format!("{PREFIX}required={}", spec.range.required),
    ];
    if let Some(fs) = spec.fs_type {
        tags.push(format!("{PREFIX}fs={}", fs.as_str()));
    }
    for (k, v) in spec.parameters.to_map() {
        tags.push(tag(
            format!("parameters[{k:?}]"),
            &format!("p/{}", escape(&k)),
            &escape(&v),
        )?);
    }
    if let Some(src) = &spec.source {
        tags.push(format!("{PREFIX}src={}", source_tag(src)));
    }
    if let Some(tier) = &spec.tier {
        tags.extend(tier_tags(tier)?);
    }
    Ok(tags)
}

/// The `iolane.dev/t/...` tags of a resolved tier (a volume's tier is replaced by
/// deleting the old set and adding this one in one `lvchange`).
pub fn tier_tags(tier: &ResolvedTier) -> Result<Vec<String>> {
    tier.to_map()
        .into_iter()
        .map(|(k, v)| {
            tag(
                format!("tier[{k:?}]"),
                &format!("t/{}", escape(&k)),
                &escape(&v),
            )
        })
        .collect()
}

/// A content source as its tag value; the IDs are validated, so they need no escaping.
fn source_tag(src: &ContentSource) -> String {
    match src {
        ContentSource::Snapshot(id) => format!("snapshot/{id}"),
        ContentSource::Volume(id) => format!("volume/{id}"),
    }
}

fn parse_source(value: &str) -> Option<ContentSource> {
    let (kind, id) = value.split_once('/')?;
    validate::volume_id("src", id).ok()?;
    match kind {
        "snapshot" => Some(ContentSource::Snapshot(id.to_owned())),
        "volume" => Some(ContentSource::Volume(id.to_owned())),
        _ => None,
    }
}

/// The tags of a new snapshot of a volume of `size` bytes with filesystem `fs`.
pub fn encode_snapshot(spec: &SnapshotSpec, size: u64, fs: Option<FsType>) -> Result<Vec<String>> {
    let mut tags = vec![
        format!("{PREFIX}v={VERSION}"),
        tag("name".to_owned(), "snap", &escape(&spec.name))?,
        format!("{PREFIX}source={}", spec.source_volume_id),
        format!("{PREFIX}created={}", spec.created_ns),
        format!("{PREFIX}size={size}"),
    ];
    if let Some(fs) = fs {
        tags.push(format!("{PREFIX}fs={}", fs.as_str()));
    }
    Ok(tags)
}

/// Reads the tags of the snapshot LV `id` back. Errors say which tag is wrong.
pub fn decode_snapshot(id: &str, tags: &[String]) -> Result<Snapshot, String> {
    let mut version = None;
    let mut name = None;
    let mut source = None;
    let mut created = None;
    let mut size = None;
    let mut fs_type = None;
    for t in tags {
        let Some(rest) = t.strip_prefix(PREFIX) else {
            continue;
        };
        let bad = || format!("tag {t:?} is malformed");
        let (key, value) = rest.split_once('=').ok_or_else(bad)?;
        match key {
            "v" => version = Some(value.parse::<u32>().map_err(|_| bad())?),
            "snap" => name = Some(unescape(value).ok_or_else(bad)?),
            "source" => {
                validate::volume_id("source", value).map_err(|_| bad())?;
                source = Some(value.to_owned());
            }
            "created" => created = Some(value.parse::<u64>().map_err(|_| bad())?),
            "size" => size = Some(value.parse::<u64>().map_err(|_| bad())?),
            "fs" => fs_type = Some(FsType::parse(value).ok_or_else(bad)?),
            _ => return Err(format!("tag {t:?} is not one a snapshot carries")),
        }
    }
    if version != Some(VERSION) {
        return Err(format!("no {PREFIX}v={VERSION} tag"));
    }
    let missing = |k: &str| format!("no {PREFIX}{k} tag");
    Ok(Snapshot {
        id: id.to_owned(),
        name: name.ok_or_else(|| missing("snap"))?,
        source_volume_id: source.ok_or_else(|| missing("source"))?,
        created_ns: created.ok_or_else(|| missing("created"))?,
        size_bytes: size.ok_or_else(|| missing("size"))?,
        fs_type,
    })
}

/// The tag of a spare (see `spares.rs`): a formatted thin LV held for the next volume of
/// its size and filesystem. A spare carries this and the version tag, nothing else.
pub fn spare_tag(fs: FsType) -> String {
    format!("{PREFIX}spare={}", fs.as_str())
}

/// The filesystem a spare is formatted with; `None` if the LV is not a spare (or its
/// spare tag names no filesystem this driver knows).
pub fn spare_fs(tags: &[String]) -> Option<FsType> {
    tags.iter()
        .find_map(|t| t.strip_prefix(PREFIX)?.strip_prefix("spare="))
        .and_then(FsType::parse)
}

/// Whether an LV carries a spare tag, readable or not.
pub fn is_spare(tags: &[String]) -> bool {
    let key = format!("{PREFIX}spare=");
    tags.iter().any(|t| t.starts_with(&key))
}

/// The tags a volume's LV loses when it becomes a spare: every iolane tag but the version.
pub fn volume_only(tags: &[String]) -> Vec<String> {
    let version = format!("{PREFIX}v={VERSION}");
    tags.iter()
        .filter(|t| t.starts_with(PREFIX) && **t != version)
        .cloned()
        .collect()
}

/// Whether an LV carries any iolane tag.
pub fn is_ours(tags: &[String]) -> bool {
    tags.iter().any(|t| t.starts_with(PREFIX))
}

/// Reads the iolane tags of an LV back. Errors say which tag is wrong.
pub fn decode(tags: &[String]) -> Result<Tagged, String> {
    let mut version = None;
    let mut name = None;
    let mut required = None;
    let mut fs_type = None;
    let mut params = BTreeMap::new();
    let mut tier = BTreeMap::new();
    let mut source = None;
    for t in tags {
        let Some(rest) = t.strip_prefix(PREFIX) else {
            continue;
        };
        let bad = || format!("tag {t:?} is malformed");
        let (key, value) = rest.split_once('=').ok_or_else(bad)?;
        match key {
            "v" => version = Some(value.parse::<u32>().map_err(|_| bad())?),
            "name" => name = Some(unescape(value).ok_or_else(bad)?),
            "required" => required = Some(value.parse::<u64>().map_err(|_| bad())?),
            "fs" => fs_type = Some(FsType::parse(value).ok_or_else(bad)?),
            "src" => source = Some(parse_source(value).ok_or_else(bad)?),
            _ => {
                let unknown = || format!("tag {t:?} is not one this driver knows");
                let (map, k) = if let Some(k) = key.strip_prefix("p/") {
                    (&mut params, k)
                } else if let Some(k) = key.strip_prefix("t/") {
                    (&mut tier, k)
                } else {
                    return Err(unknown());
                };
                let k = unescape(k).ok_or_else(unknown)?;
                map.insert(k, unescape(value).ok_or_else(bad)?);
            }
        }
    }
    match version {
        Some(VERSION) => {}
        Some(v) => {
            return Err(format!(
                "tag format version {v} is not the one this driver reads ({VERSION})"
            ));
        }
        None => return Err(format!("no {PREFIX}v tag")),
    }
    let parameters = Parameters::parse(&params).map_err(|e| format!("parameter tags: {e}"))?;
    let tier = ResolvedTier::from_map(&tier).map_err(|e| format!("tier tags: {e}"))?;
    Ok(Tagged {
        name: name.ok_or_else(|| format!("no {PREFIX}name tag"))?,
        required: required.ok_or_else(|| format!("no {PREFIX}required tag"))?,
        fs_type,
        parameters,
        tier,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{CapacityRange, volume_id_for};

    fn spec(name: &str, params: &[(&str, &str)]) -> CreateSpec {
        let map = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        CreateSpec {
            id: volume_id_for(name),
            name: name.to_owned(),
            range: CapacityRange {
                required: 5 << 20,
                limit: 0,
            },
            size: 8 << 20,
            fs_type: Some(FsType::Xfs),
            parameters: Parameters::parse(&map).unwrap(),
            tier: ResolvedTier::from_map(&BTreeMap::from([
                ("iolane.dev/tier".to_owned(), "batch".to_owned()),
                ("iolane.dev/priority".to_owned(), "batch".to_owned()),
                ("iolane.dev/read-iops".to_owned(), "200".to_owned()),
            ]))
            .unwrap(),
            source: None,
        }
    }

    fn lvm_charset(t: &str) -> bool {
        t.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'_' | b'+' | b'.' | b'-' | b'/' | b'=' | b'!' | b':' | b'&' | b'#'
                )
        })
    }

    #[test]
    fn escaping_round_trips_and_stays_in_the_tag_charset() {
        for s in [
            "pvc-0b1c",
            "a b,c=d:e",
            "ünï/cødé ☃",
            "..",
            "",
            &"x".repeat(128),
        ] {
            let e = escape(s);
            assert!(lvm_charset(&e), "{e}");
            assert_eq!(unescape(&e).as_deref(), Some(s));
        }
        assert_eq!(escape("pvc-1.data_x+y/z"), "pvc-1.data_x+y/z");
        assert_eq!(escape("a b:c"), "a:20b:3ac");
        for bad in [":", ":2", ":zz", ":41", "a=b", "a,b", ":ff"] {
            assert_eq!(unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn tags_round_trip() {
        let s = spec(
            "pvc-7f3e with spaces, commas & ünïcode",
            &[
                ("csi.storage.k8s.io/pvc/name", "data-0"),
                ("csi.storage.k8s.io/pvc/namespace", "spark"),
                ("iolane.dev/device-class", "fast"),
            ],
        );
        let tags = encode(&s).unwrap();
        for t in &tags {
            assert!(lvm_charset(t) && t.len() <= MAX_TAG_LEN, "{t}");
        }
        assert_eq!(
            tags,
            vec![
                "iolane.dev/v=1",
                "iolane.dev/name=pvc-7f3e:20with:20spaces:2c:20commas:20:26:20:c3:bcn:c3:afcode",
                "iolane.dev/required=5242880",
                "iolane.dev/fs=xfs",
                "iolane.dev/p/csi.storage.k8s.io/pvc/name=data-0",
                "iolane.dev/p/csi.storage.k8s.io/pvc/namespace=spark",
                "iolane.dev/p/iolane.dev/device-class=fast",
                "iolane.dev/t/iolane.dev/priority=batch",
                "iolane.dev/t/iolane.dev/read-iops=200",
                "iolane.dev/t/iolane.dev/tier=batch",
            ]
        );
        let mut with_foreign = tags.clone();
        with_foreign.insert(0, "backup".to_owned());
        assert!(is_ours(&with_foreign));
        let back = decode(&with_foreign).unwrap();
        assert_eq!(
            back,
            Tagged {
                name: s.name.clone(),
                required: 5 << 20,
                fs_type: Some(FsType::Xfs),
                parameters: s.parameters.clone(),
                tier: s.tier.clone(),
                source: None,
            }
        );
    }

    #[test]
    fn the_longest_names_fit() {
        // 128 bytes that all need escaping: 384 bytes escaped, well inside a tag.
        let s = spec(&"é".repeat(64), &[]);
        let tags = encode(&s).unwrap();
        assert!(tags[1].len() <= MAX_TAG_LEN);
        assert_eq!(decode(&tags).unwrap().name, s.name);
    }

    #[test]
    fn values_too_long_for_a_tag_are_refused_by_key() {
        let long = "x y".repeat(400);
        let s = spec("v", &[("csi.storage.k8s.io/pv/name", &long)]);
        let err = encode(&s).unwrap_err().to_string();
        assert!(
            err.starts_with(r#"parameters["csi.storage.k8s.io/pv/name"]"#),
            "{err}"
        );
    }

    #[test]
    fn bad_tags_are_named() {
        let base = encode(&spec("v", &[])).unwrap();
        assert!(!is_ours(&["backup".to_owned()]));
        let with = |extra: &str| {
            let mut t = base.clone();
            t.push(extra.to_owned());
            decode(&t).unwrap_err()
        };
        assert!(with("iolane.dev/tier=gold").contains("iolane.dev/tier"));
        assert!(with("iolane.dev/p/fsTypo=ext4").contains("fsTypo"));
        assert!(with("iolane.dev/fs=btrfs").contains("btrfs"));
        let mut v2 = base.clone();
        v2[0] = "iolane.dev/v=2".to_owned();
        assert!(decode(&v2).unwrap_err().contains("version 2"));
        assert!(decode(&base[1..]).unwrap_err().contains("iolane.dev/v"));
    }

    #[test]
    fn clone_and_snapshot_tags_round_trip() {
        let mut s = spec("clone", &[]);
        s.source = Some(ContentSource::Snapshot(crate::volume::snapshot_id_for("s")));
        let tags = encode(&s).unwrap();
        assert!(
            tags.iter()
                .any(|t| t.starts_with("iolane.dev/src=snapshot/iolsnap-"))
        );
        assert_eq!(decode(&tags).unwrap().source, s.source);

        let snap = SnapshotSpec {
            id: crate::volume::snapshot_id_for("snap, with ünïcode"),
            name: "snap, with ünïcode".to_owned(),
            source_volume_id: volume_id_for("v"),
            created_ns: 1_700_000_000_123_456_789,
        };
        let tags = encode_snapshot(&snap, 64 << 20, Some(FsType::Ext4)).unwrap();
        for t in &tags {
            assert!(lvm_charset(t) && t.len() <= MAX_TAG_LEN, "{t}");
        }
        assert_eq!(
            decode_snapshot(&snap.id, &tags).unwrap(),
            Snapshot {
                id: snap.id.clone(),
                name: snap.name.clone(),
                source_volume_id: snap.source_volume_id.clone(),
                size_bytes: 64 << 20,
                created_ns: snap.created_ns,
                fs_type: Some(FsType::Ext4),
            }
        );
        // A volume's tags are not a snapshot's, nor the other way round.
        assert!(decode_snapshot(&snap.id, &encode(&s).unwrap()).is_err());
        assert!(decode(&tags).is_err());
        let mut bad = tags.clone();
        bad.push("iolane.dev/created=yesterday".to_owned());
        assert!(
            decode_snapshot(&snap.id, &bad)
                .unwrap_err()
                .contains("created")
        );
    }
}
