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
mod tests {
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
        if let Some(k) = map.keys().find(|k| {
            k.starts_with(keys::PREFIX) && !keys::STORAGE_CLASS_KEYS.contains(&k.as_str())
        }) {
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
            (
                "batch",
                NONE,
                gib,
                "rbps=209715200 wbps=209715200 riops=2000 wiops=2000",
            ),
            (
                "batch",
                Overrides {
                    read_iops: Some(MAX),
                    write_bps: Some(n(5)),
                    ..NONE
                },
                gib,
                "rbps=209715200 wbps=5 riops=max wiops=2000",
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
                Err(
                    "stored iolane.dev/write-bps: must be a positive integer or \"max\", got \"0\"",
                ),
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
}
