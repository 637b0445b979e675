//! Which tier a volume gets, and its stored form.
//!
//! Layers, weakest first; each key a later layer sets replaces the earlier value of that
//! key only:
//!
//! 1. the built-in default tier, [`keys::DEFAULT_TIER`] (`batch`);
//! 2. the StorageClass parameters: [`keys::TIER`] and the explicit caps [`keys::READ_IOPS`],
//!    [`keys::WRITE_IOPS`], [`keys::READ_BPS`], [`keys::WRITE_BPS`];
//! 3. the PVC annotation [`keys::TIER`], only for a tier the StorageClass lists in
//!    [`keys::ALLOWED_TIERS`] (naming the tier the volume already has is always allowed:
//!    it changes nothing);
//! 4. the VolumeAttributesClass parameters (CSI `mutable_parameters`): the same five keys
//!    as the StorageClass, nothing else.
//!
//! So a PVC that picks another tier keeps the StorageClass's explicit caps: those belong to
//! the class, and choosing a tier within it does not lift them. A VolumeAttributesClass is
//! not limited by `allowed-tiers`: it is a cluster object only an admin creates.
//!
//! The result names the tier and carries the explicit caps; the tier's own caps are looked
//! up when the limits are computed ([`ResolvedTier::limits_for`]), so a node config change
//! reaches existing volumes.

use std::collections::BTreeMap;

use crate::keys;
use crate::tier::{Limit, Limits, Priority, TierSet, valid_tier_name};

/// Caps set explicitly on top of the tier's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Overrides {
    pub read_bps: Option<Limit>,
    pub write_bps: Option<Limit>,
    pub read_iops: Option<Limit>,
    pub write_iops: Option<Limit>,
}

impl Overrides {
    /// The slot of an override key (one of [`keys::OVERRIDES`]).
    fn slot(&mut self, key: &str) -> Option<&mut Option<Limit>> {
        match key {
            keys::READ_BPS => Some(&mut self.read_bps),
            keys::WRITE_BPS => Some(&mut self.write_bps),
            keys::READ_IOPS => Some(&mut self.read_iops),
            keys::WRITE_IOPS => Some(&mut self.write_iops),
            _ => None,
        }
    }

    /// Key and value of each override set, in [`keys::OVERRIDES`] order.
    fn entries(&self) -> [(&'static str, Option<Limit>); 4] {
        [
            (keys::READ_BPS, self.read_bps),
            (keys::WRITE_BPS, self.write_bps),
            (keys::READ_IOPS, self.read_iops),
            (keys::WRITE_IOPS, self.write_iops),
        ]
    }

    /// `limits` with each override set replacing its cap.
    pub fn apply(&self, limits: Limits) -> Limits {
        Limits {
            read_bps: self.read_bps.unwrap_or(limits.read_bps),
            write_bps: self.write_bps.unwrap_or(limits.write_bps),
            read_iops: self.read_iops.unwrap_or(limits.read_iops),
            write_iops: self.write_iops.unwrap_or(limits.write_iops),
        }
    }
}

/// A volume's tier after resolution: carried typed from CreateVolume to the backend, and
/// turned into strings ([`ResolvedTier::to_map`]) only where it is stored (LV tags, loop
/// metadata) and returned (`volume_context`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTier {
    pub name: String,
    /// The tier's priority class when it was resolved.
    pub priority: Priority,
    pub overrides: Overrides,
}

/// The StorageClass parameters tier resolution reads, deserialised once from the CSI
/// parameter map (the driver's `Parameters` flattens this in). Values stay as given:
/// resolution checks them and names the key when one is wrong.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
pub struct ClassTier {
    /// [`keys::ALLOWED_TIERS`].
    #[serde(
        rename = "iolane.dev/allowed-tiers",
        default,
        deserialize_with = "given"
    )]
    pub allowed_tiers: Option<String>,
    /// [`keys::READ_BPS`].
    #[serde(rename = "iolane.dev/read-bps", default, deserialize_with = "given")]
    pub read_bps: Option<String>,
    /// [`keys::READ_IOPS`].
    #[serde(rename = "iolane.dev/read-iops", default, deserialize_with = "given")]
    pub read_iops: Option<String>,
    /// [`keys::TIER`].
    #[serde(rename = "iolane.dev/tier", default, deserialize_with = "given")]
    pub tier: Option<String>,
    /// [`keys::WRITE_BPS`].
    #[serde(rename = "iolane.dev/write-bps", default, deserialize_with = "given")]
    pub write_bps: Option<String>,
    /// [`keys::WRITE_IOPS`].
    #[serde(rename = "iolane.dev/write-iops", default, deserialize_with = "given")]
    pub write_iops: Option<String>,
}

impl ClassTier {
    /// Key and value of each parameter set, in key order.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            (keys::ALLOWED_TIERS, &self.allowed_tiers),
            (keys::READ_BPS, &self.read_bps),
            (keys::READ_IOPS, &self.read_iops),
            (keys::TIER, &self.tier),
            (keys::WRITE_BPS, &self.write_bps),
            (keys::WRITE_IOPS, &self.write_iops),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_deref().map(|v| (k, v)))
    }

    /// The error for a StorageClass parameter under [`keys::PREFIX`] that is not one of
    /// [`keys::STORAGE_CLASS_KEYS`].
    pub fn unknown_key(key: &str) -> ResolveError {
        unknown_key(Layer::StorageClass, key, &keys::STORAGE_CLASS_KEYS)
    }
}

/// A parameter that is present (a CSI map value is a plain string, never null).
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    <String as serde::Deserialize>::deserialize(d).map(Some)
}

/// What resolution reads.
#[derive(Debug, Clone, Copy)]
pub struct Layers<'a> {
    /// The tier keys of the CreateVolume `parameters` (the StorageClass parameters).
    pub class: &'a ClassTier,
    /// The PVC's `iolane.dev/tier` annotation; `None` when absent or not looked up.
    pub pvc_tier: Option<&'a str>,
    /// CSI `mutable_parameters` (the VolumeAttributesClass parameters); every key must be
    /// one of [`keys::MUTABLE_KEYS`].
    pub mutable_parameters: Option<&'a BTreeMap<String, String>>,
}

/// Why a tier could not be resolved or read back. Every message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// A key the layer may not carry.
    #[error("{field}: unknown key; known keys: {known}")]
    UnknownKey { field: String, known: String },
    /// A value that does not parse, or names a tier this node does not know.
    #[error("{field}: {reason}")]
    InvalidValue { field: String, reason: String },
    /// A PVC annotation naming a tier its StorageClass does not allow.
    #[error("{field}: {reason}")]
    NotAllowed { field: String, reason: String },
    /// A stored tier (LV tag, `volume_context`) that does not read back.
    #[error("stored {key}: {reason}")]
    Corrupt { key: String, reason: String },
    /// A stored tier that the node config no longer defines.
    #[error("tier {0:?} is not defined on this node")]
    TierGone(String),
}

impl ResolveError {
    /// The parameter, annotation or stored key the error is about.
    pub fn field(&self) -> &str {
        match self {
            ResolveError::UnknownKey { field, .. }
            | ResolveError::InvalidValue { field, .. }
            | ResolveError::NotAllowed { field, .. } => field,
            ResolveError::Corrupt { key, .. } => key,
            ResolveError::TierGone(_) => keys::TIER,
        }
    }
}

/// Where a key came from, for messages.
#[derive(Debug, Clone, Copy)]
enum Layer {
    StorageClass,
    Pvc,
    VolumeAttributesClass,
}

impl Layer {
    fn field(self, key: &str) -> String {
        match self {
            Layer::StorageClass => format!("parameters[{key:?}]"),
            Layer::Pvc => format!("PVC annotations[{key:?}]"),
            Layer::VolumeAttributesClass => format!("mutable_parameters[{key:?}]"),
        }
    }
}

/// Resolves a volume's tier from its layers against the tiers this node knows.
pub fn resolve(tiers: &TierSet, layers: &Layers<'_>) -> Result<ResolvedTier, ResolveError> {
    check(tiers, layers.class, layers.mutable_parameters)?.with_pvc(tiers, layers.pvc_tier)
}

/// The StorageClass and VolumeAttributesClass layers, read and checked: all that is left
/// is the PVC annotation, which the driver looks up only once these are known to be good.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The tier after layers 1 and 2.
    class_tier: String,
    /// The StorageClass's `allowed-tiers`, when it sets it.
    allowed: Option<Vec<String>>,
    /// The StorageClass's explicit caps.
    class_overrides: Overrides,
    /// The VolumeAttributesClass's tier, when it names one.
    vac_tier: Option<String>,
    /// The VolumeAttributesClass's explicit caps (each replaces the class's).
    vac_overrides: Overrides,
}

/// Reads and checks layers 2 and 4 (see the module doc).
pub fn check(
    tiers: &TierSet,
    class: &ClassTier,
    mutable: Option<&BTreeMap<String, String>>,
) -> Result<Checked, ResolveError> {
    // 2. StorageClass.
    let layer = Layer::StorageClass;
    let mut class_tier = keys::DEFAULT_TIER.to_owned();
    let mut class_overrides = Overrides::default();
    let mut allowed = None;
    for (key, value) in class.entries() {
        if key == keys::ALLOWED_TIERS {
            allowed = Some(
                allowed_tiers(tiers, value)?
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            );
        } else if !apply_key(
            tiers,
            layer,
            key,
            value,
            &mut class_tier,
            &mut class_overrides,
        )? {
            return Err(unknown_key(layer, key, &keys::STORAGE_CLASS_KEYS));
        }
    }

    // 4. VolumeAttributesClass.
    let vac = Layer::VolumeAttributesClass;
    let mut vac_tier = None;
    let mut vac_overrides = Overrides::default();
    for (key, value) in mutable.into_iter().flatten() {
        let mut name = String::new();
        if !apply_key(tiers, vac, key, value, &mut name, &mut vac_overrides)? {
            return Err(unknown_key(vac, key, &keys::MUTABLE_KEYS));
        }
        if key == keys::TIER {
            vac_tier = Some(name);
        }
    }
    Ok(Checked {
        class_tier,
        allowed,
        class_overrides,
        vac_tier,
        vac_overrides,
    })
}

impl Checked {
    /// Adds layer 3, the PVC annotation (only a tier the class allows), and finishes.
    pub fn with_pvc(
        self,
        tiers: &TierSet,
        pvc_tier: Option<&str>,
    ) -> Result<ResolvedTier, ResolveError> {
        let mut name = self.class_tier;
        // 3. PVC annotation.
        if let Some(wanted) = pvc_tier
            && wanted != name
        {
            let field = Layer::Pvc.field(keys::TIER);
            let allowed_field = Layer::StorageClass.field(keys::ALLOWED_TIERS);
            match &self.allowed {
                Some(list) if list.iter().any(|t| t == wanted) => name = wanted.to_owned(),
                Some(list) => {
                    return Err(ResolveError::NotAllowed {
                        field,
                        reason: format!(
                            "tier {wanted:?} is not allowed by the StorageClass, whose \
                             {allowed_field} lists only {}",
                            list.join(", ")
                        ),
                    });
                }
                None => {
                    return Err(ResolveError::NotAllowed {
                        field,
                        reason: format!(
                            "tier {wanted:?} is not allowed: the StorageClass sets no \
                             {allowed_field}, so a PVC may not choose its tier"
                        ),
                    });
                }
            }
        }
        // 4. VolumeAttributesClass, key by key.
        if let Some(vac) = self.vac_tier {
            name = vac;
        }
        let v = self.vac_overrides;
        let c = self.class_overrides;
        let overrides = Overrides {
            read_bps: v.read_bps.or(c.read_bps),
            write_bps: v.write_bps.or(c.write_bps),
            read_iops: v.read_iops.or(c.read_iops),
            write_iops: v.write_iops.or(c.write_iops),
        };
        let priority = tiers
            .get(&name)
            .map(|t| t.priority)
            .ok_or_else(|| ResolveError::TierGone(name.clone()))?;
        Ok(ResolvedTier {
            name,
            priority,
            overrides,
        })
    }
}

/// Applies `key` if it is the tier or an override; `Ok(false)` if it is neither.
fn apply_key(
    tiers: &TierSet,
    layer: Layer,
    key: &str,
    value: &str,
    name: &mut String,
    overrides: &mut Overrides,
) -> Result<bool, ResolveError> {
    if key == keys::TIER {
        known_tier(tiers, layer, key, value)?;
        *name = value.to_owned();
    } else if let Some(slot) = overrides.slot(key) {
        let limit = value
            .parse::<Limit>()
            .map_err(|e| ResolveError::InvalidValue {
                field: layer.field(key),
                reason: e.to_string(),
            })?;
        *slot = Some(limit);
    } else {
        return Ok(false);
    }
    Ok(true)
}

fn known_tier(tiers: &TierSet, layer: Layer, key: &str, value: &str) -> Result<(), ResolveError> {
    if tiers.get(value).is_some() {
        return Ok(());
    }
    Err(ResolveError::InvalidValue {
        field: layer.field(key),
        reason: format!(
            "unknown tier {value:?}; this node knows {}",
            tiers.names().collect::<Vec<_>>().join(", ")
        ),
    })
}

fn unknown_key(layer: Layer, key: &str, known: &[&str]) -> ResolveError {
    ResolveError::UnknownKey {
        field: layer.field(key),
        known: known.join(", "),
    }
}

/// The `allowed-tiers` list: comma-separated known tier names, spaces around them ignored.
fn allowed_tiers<'v>(tiers: &TierSet, value: &'v str) -> Result<Vec<&'v str>, ResolveError> {
    let layer = Layer::StorageClass;
    let mut list = Vec::new();
    for entry in value.split(',').map(str::trim) {
        if entry.is_empty() {
            return Err(ResolveError::InvalidValue {
                field: layer.field(keys::ALLOWED_TIERS),
                reason: format!("{value:?} has an empty entry; list tier names separated by ','"),
            });
        }
        known_tier(tiers, layer, keys::ALLOWED_TIERS, entry)?;
        list.push(entry);
    }
    Ok(list)
}

impl ResolvedTier {
    /// The caps of a volume of `size_bytes`: the tier's (as this node defines it now) with
    /// the explicit caps on top, in [`Limits::canonical`] form.
    pub fn limits_for(&self, tiers: &TierSet, size_bytes: u64) -> Result<Limits, ResolveError> {
        let tier = tiers
            .get(&self.name)
            .ok_or_else(|| ResolveError::TierGone(self.name.clone()))?;
        Ok(self
            .overrides
            .apply(tier.limits_for(size_bytes))
            .canonical())
    }

    /// The flat form stored in LV tags and `volume_context`: [`keys::TIER`],
    /// [`keys::PRIORITY`], and each override set.
    pub fn to_map(&self) -> BTreeMap<String, String> {
        let mut map = BTreeMap::from([
            (keys::TIER.to_owned(), self.name.clone()),
            (keys::PRIORITY.to_owned(), self.priority.to_string()),
        ]);
        for (key, value) in self.overrides.entries() {
            if let Some(limit) = value {
                map.insert(key.to_owned(), limit.to_string());
            }
        }
        map
    }

    /// Reads back what [`ResolvedTier::to_map`] wrote, ignoring every other key (a
    /// `volume_context` also carries the backend, the pod UID, ...). `None` when no tier
    /// was stored.
    pub fn from_map(map: &BTreeMap<String, String>) -> Result<Option<ResolvedTier>, ResolveError> {
        let corrupt = |key: &str, reason: String| ResolveError::Corrupt {
            key: key.to_owned(),
            reason,
        };
        let mut overrides = Overrides::default();
        for key in keys::OVERRIDES {
            if let Some(value) = map.get(key) {
                let limit = value
                    .parse()
                    .map_err(|e: crate::tier::InvalidLimit| corrupt(key, e.to_string()))?;
                if let Some(slot) = overrides.slot(key) {
                    *slot = Some(limit);
                }
            }
        }
        let Some(name) = map.get(keys::TIER) else {
            if let Some(key) = [keys::PRIORITY]
                .into_iter()
                .chain(keys::OVERRIDES)
                .find(|k| map.contains_key(*k))
            {
                return Err(corrupt(key, format!("present without {}", keys::TIER)));
            }
            return Ok(None);
        };
        if !valid_tier_name(name) {
            return Err(corrupt(keys::TIER, format!("{name:?} is not a tier name")));
        }
        let priority = map
            .get(keys::PRIORITY)
            .ok_or_else(|| corrupt(keys::PRIORITY, "missing".to_owned()))?
            .parse::<Priority>()
            .map_err(|e| corrupt(keys::PRIORITY, e.to_string()))?;
        Ok(Some(ResolvedTier {
            name: name.clone(),
            priority,
            overrides,
        }))
    }
}

#[cfg(test)]
mod tests;
