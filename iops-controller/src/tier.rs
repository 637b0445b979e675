//! The tier model: what a tier caps, the built-in tiers, and the `[tiers.<name>]` section
//! of the node config that adds to or replaces them.
//!
//! ```toml
//! [tiers.batch]                      # replaces the built-in batch tier as a whole
//! priority = "batch"
//! read_iops = 1000
//! write_iops = 1000
//! read_bps = 104857600
//! write_bps = "max"
//!
//! [tiers.scaled]                     # IOPS grow with the volume's size
//! priority = "batch"
//! read_bps = "max"
//! write_bps = "max"
//! per_gib = { read_iops = 20, write_iops = 10, floor_gib = 10, ceiling_gib = 500 }
//! ```
//!
//! Each of the four caps is given exactly once: flat (`read_iops = ..`, a positive integer
//! or `"max"`) or per GiB of volume size (`per_gib.read_iops = ..`, a positive integer).
//! A per-GiB cap counts the volume's size clamped to `floor_gib..=ceiling_gib` GiB, so the
//! tier above gives a 4 GiB volume 200 read IOPS (it counts as 10 GiB), a 100 GiB volume
//! 2000 and a 2 TiB volume 10000 (it counts as 500 GiB). `floor_gib` defaults to 1,
//! `ceiling_gib` to none.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use serde::Deserialize;

use crate::keys;

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

/// One cap: a positive number per second, or no cap (`max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    Max,
    Value(NonZeroU64),
}

impl Limit {
    /// `n` per second; 0 (which the kernel refuses with ERANGE) becomes `max`.
    pub const fn per_sec(n: u64) -> Limit {
        match NonZeroU64::new(n) {
            Some(v) => Limit::Value(v),
            None => Limit::Max,
        }
    }

    /// The number, or `None` for `max`.
    pub fn get(self) -> Option<u64> {
        match self {
            Limit::Max => None,
            Limit::Value(v) => Some(v.get()),
        }
    }

    /// `max` when at or above `ceiling`, which the kernel already treats as no cap.
    fn saturate(self, ceiling: u64) -> Limit {
        match self {
            Limit::Value(v) if v.get() >= ceiling => Limit::Max,
            other => other,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Max => f.write_str("max"),
            Limit::Value(v) => write!(f, "{v}"),
        }
    }
}

/// The smallest cap iolane accepts from a user. Linux refuses 0 (ERANGE), and from 2018
/// until late 2024 also 1 (EINVAL; measured on Debian 12's 6.1), so a cap of 1 would pass
/// validation and then fail at publish.
pub const MIN_CAP: u64 = 2;

/// Why a value is not a cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLimit(String);

impl InvalidLimit {
    /// `what` describes the value as written (`"0"`, `1.5`, `a table`, ...).
    fn new(value: Option<u64>, what: &dyn fmt::Display) -> InvalidLimit {
        InvalidLimit(match value {
            Some(1) => "1 is refused by many kernels (Linux 6.1 among them); use 2 or more, or \
                 \"max\""
                .to_owned(),
            _ => format!("must be a positive integer or \"max\", got {what}"),
        })
    }
}

impl Limit {
    /// A cap from a config number: at least [`MIN_CAP`].
    fn from_user(n: u64, what: &dyn fmt::Display) -> Result<Limit, InvalidLimit> {
        if n < MIN_CAP {
            return Err(InvalidLimit::new(Some(n), what));
        }
        Ok(Limit::per_sec(n))
    }
}

impl FromStr for Limit {
    type Err = InvalidLimit;

    /// `max`, or a decimal integer of at least [`MIN_CAP`] (digits only: no sign, no
    /// unit, no spaces). For caps from users; `io.max` is read with [`crate::iomax`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "max" {
            return Ok(Limit::Max);
        }
        let what = format!("{s:?}");
        match positive_decimal(s) {
            Some(n) => Limit::from_user(n.get(), &what),
            None => Err(InvalidLimit::new(None, &what)),
        }
    }
}

/// Digits only, above zero, fits in a u64.
pub(crate) fn positive_decimal(s: &str) -> Option<NonZeroU64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// The four caps of one volume, as `io.max` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    pub read_bps: Limit,
    pub write_bps: Limit,
    pub read_iops: Limit,
    pub write_iops: Limit,
}

impl Limits {
    /// No cap at all: what `io.max` means for a device it does not list.
    pub const UNLIMITED: Limits = Limits {
        read_bps: Limit::Max,
        write_bps: Limit::Max,
        read_iops: Limit::Max,
        write_iops: Limit::Max,
    };

    /// The limits as the kernel stores them, so that what iolane wants compares equal to
    /// what it reads back from `io.max`: the kernel keeps IOPS in 32 bits and treats
    /// `u32::MAX` as no cap (larger values are clamped to it), and treats `u64::MAX`
    /// bytes/s as no cap.
    pub fn canonical(self) -> Limits {
        let iops = u64::from(u32::MAX);
        Limits {
            read_bps: self.read_bps.saturate(u64::MAX),
            write_bps: self.write_bps.saturate(u64::MAX),
            read_iops: self.read_iops.saturate(iops),
            write_iops: self.write_iops.saturate(iops),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.canonical() == Limits::UNLIMITED
    }
}

impl fmt::Display for Limits {
    /// The body of an `io.max` line: `rbps=.. wbps=.. riops=.. wiops=..`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rbps={} wbps={} riops={} wiops={}",
            self.read_bps, self.write_bps, self.read_iops, self.write_iops
        )
    }
}

/// Priority class of a tier: streaming volumes are kept ahead of batch volumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Priority {
    // Declared lowest first, so `Streaming > Batch`.
    Batch,
    Streaming,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Streaming => "streaming",
            Priority::Batch => "batch",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a value that should be a [`Priority`] was instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be \"streaming\" or \"batch\", got {0}")]
pub struct InvalidPriority(pub String);

impl FromStr for Priority {
    type Err = InvalidPriority;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "streaming" => Ok(Priority::Streaming),
            "batch" => Ok(Priority::Batch),
            other => Err(InvalidPriority(format!("{other:?}"))),
        }
    }
}

/// How a tier sets one cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    /// The same cap whatever the volume's size.
    Flat(Limit),
    /// This much per GiB of volume size (clamped to the tier's [`Scaling`]).
    PerGib(NonZeroU64),
}

/// The size range per-GiB caps count, in GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scaling {
    /// Smaller volumes count as this big.
    pub floor_gib: NonZeroU64,
    /// Larger volumes count as this big; `None` = no ceiling.
    pub ceiling_gib: Option<NonZeroU64>,
}

impl Default for Scaling {
    fn default() -> Self {
        Scaling {
            floor_gib: NonZeroU64::MIN,
            ceiling_gib: None,
        }
    }
}

/// A named set of caps with a priority class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tier {
    pub name: String,
    pub read_iops: Rate,
    pub write_iops: Rate,
    pub read_bps: Rate,
    pub write_bps: Rate,
    /// Used only by [`Rate::PerGib`] caps.
    pub scaling: Scaling,
    pub priority: Priority,
}

/// The built-in batch caps.
///
/// A datacenter NVMe drive serves several hundred thousand random 4 KiB IOPS and 2-7 GB/s;
/// the pressure a batch job puts on it is what matters, not what the job alone could use.
/// 2000 IOPS is ample for shuffle and spill files, which Spark and Flink write and read in
/// large sequential chunks, yet ten batch volumes together still take only a few percent
/// of the drive's IOPS. 200 MiB/s lets one batch volume stream a 10 GiB spill in under a
/// minute while ten of them stay within about 2 GB/s, so a streaming volume on the same
/// drive keeps most of its bandwidth. Operators with other drives replace the tier in the
/// node config.
pub const BATCH_IOPS: u64 = 2000;
/// See [`BATCH_IOPS`].
pub const BATCH_BPS: u64 = 200 * MIB;

impl Tier {
    /// The built-in uncapped tier.
    pub fn streaming() -> Tier {
        Tier::flat(keys::STREAMING, Limits::UNLIMITED, Priority::Streaming)
    }

    /// The built-in capped tier (see [`BATCH_IOPS`]).
    pub fn batch() -> Tier {
        Tier::flat(
            keys::BATCH,
            Limits {
                read_bps: Limit::per_sec(BATCH_BPS),
                write_bps: Limit::per_sec(BATCH_BPS),
                read_iops: Limit::per_sec(BATCH_IOPS),
                write_iops: Limit::per_sec(BATCH_IOPS),
            },
            Priority::Batch,
        )
    }

    /// A tier whose caps do not depend on volume size.
    pub fn flat(name: &str, limits: Limits, priority: Priority) -> Tier {
        Tier {
            name: name.to_owned(),
            read_iops: Rate::Flat(limits.read_iops),
            write_iops: Rate::Flat(limits.write_iops),
            read_bps: Rate::Flat(limits.read_bps),
            write_bps: Rate::Flat(limits.write_bps),
            scaling: Scaling::default(),
            priority,
        }
    }

    /// The caps of a volume of `size_bytes` in this tier, in [`Limits::canonical`] form.
    pub fn limits_for(&self, size_bytes: u64) -> Limits {
        let cap = |rate: Rate| match rate {
            Rate::Flat(limit) => limit,
            Rate::PerGib(per_gib) => self.scaling.scale(per_gib, size_bytes),
        };
        Limits {
            read_bps: cap(self.read_bps),
            write_bps: cap(self.write_bps),
            read_iops: cap(self.read_iops),
            write_iops: cap(self.write_iops),
        }
        .canonical()
    }
}

impl Scaling {
    /// `per_gib` times the size in GiB, the size clamped to the floor and ceiling, rounded
    /// down, and at least [`MIN_CAP`]; saturates to `max`.
    fn scale(&self, per_gib: NonZeroU64, size_bytes: u64) -> Limit {
        let gib = u128::from(GIB);
        let mut size = u128::from(size_bytes).max(u128::from(self.floor_gib.get()) * gib);
        if let Some(ceiling) = self.ceiling_gib {
            size = size.min(u128::from(ceiling.get()) * gib);
        }
        let value = u128::from(per_gib.get()) * size / gib;
        Limit::per_sec(u64::try_from(value).unwrap_or(u64::MAX).max(MIN_CAP))
    }
}

/// A tier problem found in the node config, naming the field (`tiers.<name>.<key>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TierError {
    pub field: String,
    pub reason: String,
}

/// The `[tiers]` section of the node config: tier name to its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct TierConfig(pub BTreeMap<String, TierSpec>);

/// One `[tiers.<name>]` table as written. Values are taken loosely here and checked by
/// [`TierSet::from_config`], so a wrong value gets a message naming its field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierSpec {
    #[serde(default)]
    pub priority: Option<ConfigValue>,
    #[serde(default)]
    pub read_iops: Option<ConfigValue>,
    #[serde(default)]
    pub write_iops: Option<ConfigValue>,
    #[serde(default)]
    pub read_bps: Option<ConfigValue>,
    #[serde(default)]
    pub write_bps: Option<ConfigValue>,
    #[serde(default)]
    pub per_gib: Option<PerGibSpec>,
}

/// The `per_gib` table of a tier as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerGibSpec {
    #[serde(default)]
    pub read_iops: Option<ConfigValue>,
    #[serde(default)]
    pub write_iops: Option<ConfigValue>,
    #[serde(default)]
    pub read_bps: Option<ConfigValue>,
    #[serde(default)]
    pub write_bps: Option<ConfigValue>,
    #[serde(default)]
    pub floor_gib: Option<ConfigValue>,
    #[serde(default)]
    pub ceiling_gib: Option<ConfigValue>,
}

/// A config value before validation: an integer, a string, or something else (kept as a
/// description for the error message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Int(i128),
    Str(String),
    Other(String),
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigValue::Int(n) => write!(f, "{n}"),
            ConfigValue::Str(s) => write!(f, "{s:?}"),
            ConfigValue::Other(what) => f.write_str(what),
        }
    }
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ConfigValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Int(v))
            }
            fn visit_f64<E>(self, v: f64) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Other(format!("the float {v}")))
            }
            fn visit_bool<E>(self, v: bool) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Other(format!("the boolean {v}")))
            }
            fn visit_str<E>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::Str(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<ConfigValue, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(ConfigValue::Other("an array".to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<ConfigValue, A::Error> {
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(ConfigValue::Other("a table".to_owned()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// The tiers a node knows: the built-ins, with the node config's added or replacing them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSet {
    tiers: BTreeMap<String, Tier>,
}

impl Default for TierSet {
    fn default() -> Self {
        TierSet::builtin()
    }
}

impl TierSet {
    /// `streaming` and `batch` only.
    pub fn builtin() -> TierSet {
        let tiers = [Tier::streaming(), Tier::batch()]
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect();
        TierSet { tiers }
    }

    /// The built-ins merged with `config`: a configured tier replaces a built-in of the
    /// same name as a whole. The first problem found is returned, naming its field.
    pub fn from_config(config: &TierConfig) -> Result<TierSet, TierError> {
        let mut set = TierSet::builtin();
        for (name, spec) in &config.0 {
            let tier = spec.to_tier(name)?;
            set.tiers.insert(name.clone(), tier);
        }
        Ok(set)
    }

    pub fn get(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// Tier names in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tiers.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Tier> {
        self.tiers.values()
    }
}

/// Whether `name` can name a tier: a DNS label (1-63 of `a-z`, `0-9`, `-`, starting and
/// ending with a letter or digit), so it is safe in annotations, LV tags and metrics.
pub fn valid_tier_name(name: &str) -> bool {
    let b = name.as_bytes();
    (1..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.first() != Some(&b'-')
        && b.last() != Some(&b'-')
}

impl TierSpec {
    fn to_tier(&self, name: &str) -> Result<Tier, TierError> {
        let at = |key: &str| format!("tiers.{name}.{key}");
        let err = |field: String, reason: String| TierError { field, reason };
        if !valid_tier_name(name) {
            return Err(err(
                format!("tiers.{name}"),
                "a tier name must be 1-63 lowercase letters, digits and '-', starting and \
                 ending with a letter or digit"
                    .to_owned(),
            ));
        }
        let priority = match &self.priority {
            None => {
                return Err(err(
                    at("priority"),
                    "missing; must be \"streaming\" or \"batch\"".to_owned(),
                ));
            }
            Some(ConfigValue::Str(s)) => s
                .parse::<Priority>()
                .map_err(|e| err(at("priority"), e.to_string()))?,
            Some(other) => {
                return Err(err(
                    at("priority"),
                    InvalidPriority(other.to_string()).to_string(),
                ));
            }
        };
        let empty = PerGibSpec::default();
        let per_gib = self.per_gib.as_ref().unwrap_or(&empty);
        let rate = |key: &str, flat: &Option<ConfigValue>, scaled: &Option<ConfigValue>| match (
            flat, scaled,
        ) {
            (Some(_), Some(_)) => Err(err(
                at(key),
                format!("also set as per_gib.{key}; give one or the other"),
            )),
            (Some(v), None) => Ok(Rate::Flat(config_limit(v).map_err(|r| err(at(key), r))?)),
            (None, Some(v)) => {
                let key = format!("per_gib.{key}");
                Ok(Rate::PerGib(
                    config_positive(v).map_err(|r| err(at(&key), r))?,
                ))
            }
            (None, None) => Err(err(
                at(key),
                format!("missing; must be a positive integer or \"max\" (or set per_gib.{key})"),
            )),
        };
        let read_iops = rate("read_iops", &self.read_iops, &per_gib.read_iops)?;
        let write_iops = rate("write_iops", &self.write_iops, &per_gib.write_iops)?;
        let read_bps = rate("read_bps", &self.read_bps, &per_gib.read_bps)?;
        let write_bps = rate("write_bps", &self.write_bps, &per_gib.write_bps)?;
        let scaling = match &self.per_gib {
            None => Scaling::default(),
            Some(p) => p.scaling(&at)?,
        };
        Ok(Tier {
            name: name.to_owned(),
            read_iops,
            write_iops,
            read_bps,
            write_bps,
            scaling,
            priority,
        })
    }
}

impl PerGibSpec {
    fn scaling(&self, at: &dyn Fn(&str) -> String) -> Result<Scaling, TierError> {
        let err = |key: &str, reason: String| TierError {
            field: at(key),
            reason,
        };
        if [
            &self.read_iops,
            &self.write_iops,
            &self.read_bps,
            &self.write_bps,
        ]
        .iter()
        .all(|v| v.is_none())
        {
            return Err(err(
                "per_gib",
                "scales nothing; set at least one of read_iops, write_iops, read_bps, write_bps"
                    .to_owned(),
            ));
        }
        let positive = |key: &str, v: &Option<ConfigValue>| {
            v.as_ref()
                .map(|v| config_positive(v).map_err(|r| err(key, r)))
                .transpose()
        };
        let floor_gib = positive("per_gib.floor_gib", &self.floor_gib)?.unwrap_or(NonZeroU64::MIN);
        let ceiling_gib = positive("per_gib.ceiling_gib", &self.ceiling_gib)?;
        if let Some(ceiling) = ceiling_gib
            && ceiling < floor_gib
        {
            return Err(err(
                "per_gib.ceiling_gib",
                format!("{ceiling} is below per_gib.floor_gib {floor_gib}"),
            ));
        }
        Ok(Scaling {
            floor_gib,
            ceiling_gib,
        })
    }
}

/// An integer of at least [`MIN_CAP`], or `"max"`.
fn config_limit(v: &ConfigValue) -> Result<Limit, String> {
    let limit = match v {
        ConfigValue::Str(s) if s == "max" => Ok(Limit::Max),
        ConfigValue::Int(n) => match u64::try_from(*n) {
            Ok(n) if n > 0 => Limit::from_user(n, v),
            _ => Err(InvalidLimit::new(None, v)),
        },
        other => Err(InvalidLimit::new(None, other)),
    };
    limit.map_err(|e| e.to_string())
}

/// A positive integer.
fn config_positive(v: &ConfigValue) -> Result<NonZeroU64, String> {
    match v {
        ConfigValue::Int(n) => u64::try_from(*n).ok().and_then(NonZeroU64::new),
        _ => None,
    }
    .ok_or_else(|| format!("must be a positive integer, got {v}"))
}

#[cfg(test)]
mod tests {
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
        for size in [1, GIB, 10_000 * GIB] {
            assert_eq!(
                batch.limits_for(size).to_string(),
                "rbps=209715200 wbps=209715200 riops=2000 wiops=2000"
            );
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
                "tiers.t.read_iops: also set as per_gib.read_iops; give one or the other"
                    .to_owned(),
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
}
