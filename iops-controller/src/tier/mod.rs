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

//!
//! - [`limit`](mod@limit): one cap ([`Limit`]) and a volume's four ([`Limits`]).
//! - [`config`]: the `[tiers.<name>]` tables as written and their checks.

mod config;
mod limit;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use crate::keys;

pub use config::{ConfigValue, PerGibSpec, TierConfig, TierError, TierSpec};
pub(crate) use limit::positive_decimal;
pub use limit::{InvalidLimit, Limit, Limits, MIN_CAP};

/// One GiB in bytes.
pub const GIB: u64 = 1 << 30;
/// One MiB in bytes.
pub const MIB: u64 = 1 << 20;

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

impl Tier {
    /// The built-in uncapped tier.
    pub fn streaming() -> Tier {
        Tier::flat(keys::STREAMING, Limits::UNLIMITED, Priority::Streaming)
    }

    /// The built-in batch tier: no fixed cap. Its volumes share, per physical device, what
    /// streaming volumes leave, above the class's floor (the priority controllers,
    /// `crate::priority`, `docs/priority.md`); a `[tiers.batch]` table with caps puts hard
    /// ceilings on top of that share.
    pub fn batch() -> Tier {
        Tier::flat(keys::BATCH, Limits::UNLIMITED, Priority::Batch)
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

#[cfg(test)]
mod tests;
