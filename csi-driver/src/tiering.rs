//! The driver's side of IO tiers: which tier a new volume gets (CreateVolume) and what caps
//! a published volume has. The tier model, resolution and the cgroup files are
//! `iops_controller`'s; this module feeds it the request, the PVC annotation and the
//! volume's stored tier.

use std::collections::BTreeMap;
use std::sync::Arc;

use iops_controller::{Layers, Limits, ResolvedTier, TierSet, keys};

use crate::error::{Error, Result};
use crate::k8s::{LookupError, PvcAnnotations};
use crate::volume::{Parameters, Volume};

/// Tiers and the PVC look-up, shared by every call.
#[derive(Debug)]
pub struct Tiering {
    tiers: TierSet,
    pvc: Option<Arc<dyn PvcAnnotations>>,
}

impl Tiering {
    /// `pvc` is `None` where no Kubernetes API is configured: then the PVC annotation is
    /// not looked up (csi-sanity, the demo).
    pub fn new(tiers: TierSet, pvc: Option<Arc<dyn PvcAnnotations>>) -> Self {
        Tiering { tiers, pvc }
    }

    pub fn tiers(&self) -> &TierSet {
        &self.tiers
    }

    /// The tier of a new volume from its StorageClass parameters, the PVC annotation
    /// (when csi-provisioner passed the PVC's name and an API is configured) and the
    /// VolumeAttributesClass parameters. Resolution runs once; the parameters are checked
    /// before the PVC is looked up, so a bad StorageClass is reported without an API
    /// round trip.
    pub async fn resolve(
        &self,
        parameters: &Parameters,
        mutable: Option<&BTreeMap<String, String>>,
    ) -> Result<ResolvedTier> {
        let checked = iops_controller::resolve::check(&self.tiers, &parameters.tier, mutable)?;
        let pvc_tier = match (&self.pvc, &parameters.pvc_namespace, &parameters.pvc_name) {
            (Some(api), Some(namespace), Some(name)) => {
                api.tier(namespace, name).await.map_err(lookup_error)?
            }
            _ => None,
        };
        Ok(checked.with_pvc(&self.tiers, pvc_tier.as_deref())?)
    }

    /// Checks a StorageClass's tier keys alone (tier names, allowed tiers and caps,
    /// against this config's tiers): INVALID_ARGUMENT naming the key, as CreateVolume
    /// answers for the same class.
    pub fn check_class(&self, class: &iops_controller::ClassTier) -> Result<()> {
        iops_controller::resolve::check(&self.tiers, class, None)?;
        Ok(())
    }

    /// Checks `mutable_parameters` alone (keys and tier names, against this config's
    /// tiers): INVALID_ARGUMENT naming the key.
    pub fn check_mutable(&self, mutable: &BTreeMap<String, String>) -> Result<()> {
        iops_controller::resolve::check(
            &self.tiers,
            &iops_controller::ClassTier::default(),
            Some(mutable),
        )?;
        Ok(())
    }

    /// Re-resolution of a stored volume from layers known already (the node's PV/PVC
    /// watch): its stored StorageClass parameters, the PVC annotation as watched, and the
    /// VolumeAttributesClass parameters in force. The same precedence as at CreateVolume.
    pub fn resolve_layers(
        &self,
        parameters: &Parameters,
        pvc_tier: Option<&str>,
        mutable: Option<&BTreeMap<String, String>>,
    ) -> std::result::Result<ResolvedTier, iops_controller::ResolveError> {
        iops_controller::resolve::check(&self.tiers, &parameters.tier, mutable)?
            .with_pvc(&self.tiers, pvc_tier)
    }

    /// The caps of `volume` now: its stored tier as this node defines it, scaled to its
    /// size. A volume without a stored tier (created before tiers were stored) gets the
    /// tier its stored parameters resolve to; a stored tier the node config no longer
    /// defines falls back to the default tier, with a warning.
    pub fn limits_of(&self, volume: &Volume) -> (String, Limits) {
        let stored = match &volume.tier {
            Some(t) => Ok(t.clone()),
            None => iops_controller::resolve(
                &self.tiers,
                &Layers {
                    class: &volume.parameters.tier,
                    pvc_tier: None,
                    mutable_parameters: None,
                },
            ),
        };
        let limits = stored.and_then(|t| {
            let limits = t.limits_for(&self.tiers, volume.capacity_bytes)?;
            Ok((t.name, limits))
        });
        match limits {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(
                    volume.id = %volume.id,
                    error = %e,
                    tier = keys::DEFAULT_TIER,
                    "the volume's stored tier cannot be used; capping it with the default tier"
                );
                let default = self
                    .tiers
                    .get(keys::DEFAULT_TIER)
                    .map_or(Limits::UNLIMITED, |t| {
                        t.limits_for(volume.capacity_bytes).canonical()
                    });
                (keys::DEFAULT_TIER.to_owned(), default)
            }
        }
    }
}

/// A failed PVC look-up as the error CreateVolume returns: bad names are the caller's,
/// a missing PVC or missing RBAC need someone to act, the rest is worth a retry.
fn lookup_error(e: LookupError) -> Error {
    match e {
        LookupError::InvalidName { field, .. } => Error::InvalidArgument {
            field: format!("parameters[{field:?}]"),
            reason: e.to_string(),
        },
        LookupError::NotFound { .. } | LookupError::Forbidden { .. } => {
            Error::FailedPrecondition(format!("cannot read the PVC's {}: {e}", keys::TIER))
        }
        LookupError::Timeout { .. }
        | LookupError::Unavailable { .. }
        | LookupError::Unexpected { .. } => {
            Error::NotReady(format!("cannot read the PVC's {}: {e}", keys::TIER))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Annotated(Option<&'static str>);

    #[async_trait::async_trait]
    impl PvcAnnotations for Annotated {
        async fn tier(
            &self,
            namespace: &str,
            name: &str,
        ) -> std::result::Result<Option<String>, LookupError> {
            assert_eq!((namespace, name), ("spark", "shuffle-0"));
            Ok(self.0.map(str::to_owned))
        }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn stored(pairs: &[(&str, &str)]) -> Option<ResolvedTier> {
        ResolvedTier::from_map(&map(pairs)).unwrap()
    }

    async fn resolve_with(
        pvc: Option<&'static str>,
        class: &[(&str, &str)],
    ) -> Result<ResolvedTier> {
        let t = Tiering::new(TierSet::builtin(), Some(Arc::new(Annotated(pvc))));
        t.resolve(&Parameters::parse(&map(class))?, None).await
    }

    #[tokio::test]
    async fn pvc_annotation_is_used_only_when_the_class_allows_it() {
        let pvc = [
            (keys::PVC_NAME, "shuffle-0"),
            (keys::PVC_NAMESPACE, "spark"),
        ];
        let mut class = pvc.to_vec();
        class.push((keys::TIER, "batch"));
        class.push((keys::ALLOWED_TIERS, "batch,streaming"));
        let t = resolve_with(Some("streaming"), &class).await.unwrap();
        assert_eq!(t.name, "streaming");
        let t = resolve_with(None, &class).await.unwrap();
        assert_eq!(t.name, "batch");

        let mut strict = pvc.to_vec();
        strict.push((keys::TIER, "batch"));
        let e = resolve_with(Some("streaming"), &strict).await.unwrap_err();
        match e {
            Error::InvalidArgument { field, reason } => {
                assert!(field.contains("iolane.dev/tier"), "{field}");
                assert!(reason.contains("allowed-tiers"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn no_pvc_name_means_no_lookup_and_bad_keys_are_named() {
        // The fake asserts the PVC it is asked about; without the PVC keys it is not asked.
        let t = resolve_with(Some("streaming"), &[(keys::TIER, "streaming")])
            .await
            .unwrap();
        assert_eq!(t.name, "streaming");
        let e = resolve_with(None, &[(keys::READ_IOPS, "-5")])
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("iolane.dev/read-iops"), "{e}");
    }

    #[test]
    fn limits_of_reads_the_stored_tier_and_falls_back_to_the_default() {
        let t = Tiering::new(TierSet::builtin(), None);
        let mut v = Volume {
            id: "iol-x".to_owned(),
            name: "x".to_owned(),
            capacity_bytes: 1 << 30,
            fs_type: None,
            parameters: Parameters::default(),
            tier: stored(&[(keys::TIER, "streaming"), (keys::PRIORITY, "streaming")]),
            source: None,
        };
        assert_eq!(t.limits_of(&v), ("streaming".to_owned(), Limits::UNLIMITED));
        v.tier = stored(&[
            (keys::TIER, "batch"),
            (keys::PRIORITY, "batch"),
            (keys::READ_IOPS, "150"),
        ]);
        let (name, limits) = t.limits_of(&v);
        assert_eq!(name, "batch");
        assert_eq!(limits.read_iops.get(), Some(150));
        v.tier = stored(&[(keys::TIER, "gone"), (keys::PRIORITY, "batch")]);
        let (name, limits) = t.limits_of(&v);
        assert_eq!(name, keys::DEFAULT_TIER);
        // The built-in batch tier: no fixed cap (the priority controllers share the device).
        assert!(limits.is_unlimited());
        v.tier = None;
        assert_eq!(t.limits_of(&v).0, keys::DEFAULT_TIER);
    }
}
