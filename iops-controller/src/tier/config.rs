//! The `[tiers.<name>]` tables of the node config as written, and their checks into
//! [`Tier`]s with errors naming the field (`tiers.<name>.<key>`).

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU64;

use serde::Deserialize;

#[allow(clippy::wildcard_imports)]
use super::*;

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

impl TierSpec {
    pub(super) fn to_tier(&self, name: &str) -> Result<Tier, TierError> {
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
