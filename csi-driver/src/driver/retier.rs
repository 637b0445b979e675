//! Live re-tiering on the node that owns a volume: bring every publication of the volume
//! to the caps of its new tier, through the enforcement controller, which rewrites each
//! pod's `io.max` line at once, and store the new resolved tier with the volume (one
//! `lvchange`, or the loop metadata's atomic write). The caps go first, so the pods see the
//! change without waiting for LVM (an `lvchange` takes 1-2 s in the emulated test VM);
//! the call returns, and the PV watch acknowledges, only once the tier is stored. When
//! storing fails, the caps of the stored tier are put back and the call fails, so the
//! enforced caps never stay ahead of what a restart would rebuild. The same refresh
//! follows an expansion, since per-GiB caps scale with the size.
//!
//! What asks for a new tier: the PV/PVC watch of `crate::retier::node` (a
//! ControllerModifyVolume recorded on the PV by `iolane controller`, or a changed PVC
//! annotation), and ControllerModifyVolume on the node's own socket.

use std::collections::BTreeMap;

use iops_controller::ResolvedTier;

use super::Driver;
use super::enforcement::log_outcome;
use crate::error::Result;
use crate::validate;
use crate::volume::Volume;

/// What [`Driver::retier`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retiered {
    /// The tier name before and after.
    pub from: String,
    pub to: String,
    /// Publications whose caps were rewritten.
    pub publications: usize,
}

impl Driver {
    /// The volume as stored, if this node has it.
    pub async fn stored_volume(&self, id: &str) -> Result<Option<Volume>> {
        self.backend.get(id).await
    }

    /// Stores `tier` as the volume's tier and re-caps its publications. `None` when the
    /// volume has this tier already (nothing is written). ABORTED while another call on
    /// the volume runs.
    pub async fn retier(&self, id: &str, tier: &ResolvedTier) -> Result<Option<Retiered>> {
        let _guard = self.inflight.claim(id)?;
        let volume = self.volume(id).await?;
        if volume.tier.as_ref() == Some(tier) {
            return Ok(None);
        }
        let from = self.tiering.limits_of(&volume).0;
        let mut retiered = volume.clone();
        retiered.tier = Some(tier.clone());
        let publications = self.refresh_caps(&retiered).await;
        if let Err(e) = self.backend.set_tier(id, tier).await {
            let restored = self.refresh_caps(&volume).await;
            tracing::warn!(volume.id = %id, error = %e, restored, "storing the new tier failed; the stored tier's caps are back");
            return Err(e);
        }
        tracing::info!(volume.id = %id, tier.from = %from, tier.to = %tier.name, publications, "volume re-tiered");
        Ok(Some(Retiered {
            from,
            to: tier.name.clone(),
            publications,
        }))
    }

    /// Re-records every publication of `volume` whose caps differ from what its stored
    /// tier and size give now; each is written at once. Returns how many changed.
    pub(super) async fn refresh_caps(&self, volume: &Volume) -> usize {
        let (tier, limits) = self.tiering.limits_of(volume);
        let mut changed = 0;
        for mut p in self.enforcement.publications().await {
            if p.volume_id != volume.id || (p.tier == tier && p.limits == limits) {
                continue;
            }
            p.tier.clone_from(&tier);
            p.limits = limits;
            let (outcome, reason) = self.enforcement.publish(p.clone()).await;
            log_outcome(&p, outcome, reason.as_deref());
            changed += 1;
        }
        changed
    }

    /// ControllerModifyVolume on the node's own socket (csi-sanity, tools without a
    /// cluster): checks the keys and tier names first (INVALID_ARGUMENT naming the key,
    /// nothing changed), then re-resolves the volume's tier with `mutable` as its
    /// VolumeAttributesClass layer and applies it here. No mutable parameters change
    /// nothing. In a cluster csi-resizer talks to `iolane controller` instead, which
    /// records the request on the PV for this node's watch.
    pub async fn modify_volume(&self, id: &str, mutable: &BTreeMap<String, String>) -> Result<()> {
        validate::volume_id("volume_id", id)?;
        self.tiering.check_mutable(mutable)?;
        let volume = self.volume(id).await?;
        if mutable.is_empty() {
            return Ok(());
        }
        let tier = self
            .tiering
            .resolve(&volume.parameters, Some(mutable))
            .await?;
        self.retier(id, &tier).await?;
        Ok(())
    }
}
