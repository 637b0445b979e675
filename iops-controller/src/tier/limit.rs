//! Caps: one cap ([`Limit`], a number per second or `max`) and the four caps of a volume
//! ([`Limits`]) in the form `io.max` takes them.

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

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
    pub(super) fn new(value: Option<u64>, what: &dyn fmt::Display) -> InvalidLimit {
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
    pub(super) fn from_user(n: u64, what: &dyn fmt::Display) -> Result<Limit, InvalidLimit> {
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
