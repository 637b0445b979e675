//! The node's re-tiering loop: watchers (kube-rs, list then watch from its
//! resourceVersion, relisting after a gap) on the PVs of this driver pinned to this node
//! and on the metadata of PVCs. When a PV records a new desired generation, or its PVC's
//! `iolane.dev/tier` annotation changes, the volume's tier is re-resolved with the
//! CreateVolume precedence (StorageClass parameters as stored with the volume < PVC
//! annotation, within the class's `allowed-tiers` < VolumeAttributesClass parameters),
//! stored and enforced ([`Driver::retier`]), an Event records the change on the PVC, and the
//! generation is acknowledged on the PV. A refused annotation gets a Warning Event saying
//! why and changes nothing.
//!
//! The first list after a start covers what was recorded while the node was down. A call
//! that cannot run now (the volume busy, the API failing) is retried after [`RETRY`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures_util::StreamExt;
use iops_controller::{ResolveError, ResolvedTier, keys};
use k8s_openapi::api::core::v1::{ObjectReference, PersistentVolume, PersistentVolumeClaim};
use k8s_openapi::api::storage::v1::VolumeAttributesClass;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::time::Instant;

use super::{PvState, ack_patch, refuse_patch};
use crate::driver::Driver;
use crate::error::Error;
use crate::node_cleanup::pv_node;

/// How long after a failed attempt a volume is tried again.
pub const RETRY: Duration = Duration::from_secs(1);
/// Event reasons.
pub const REASON_CHANGED: &str = "TierChanged";
pub const REASON_REFUSED: &str = "TierRefused";

/// What the loop needs besides the client and the driver.
#[derive(Debug, Clone)]
pub struct Settings {
    pub driver_name: String,
    pub node_id: String,
    /// The reporting instance in Events (the Pod name, from `POD_NAME`).
    pub instance: Option<String>,
}

type PvcMeta = PartialObjectMeta<PersistentVolumeClaim>;

/// One watch's objects: the synced set and the one a relist is building.
struct Cache<T> {
    objects: HashMap<String, T>,
    building: Option<HashMap<String, T>>,
    synced: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            objects: HashMap::new(),
            building: None,
            synced: false,
        }
    }
}

impl<T> Cache<T> {
    /// Feeds one watch event; returns the keys to look at now (`None`: everything, after
    /// a (re)list).
    fn feed(&mut self, event: WatchEvent<T>, key: impl Fn(&T) -> String) -> Option<Vec<String>> {
        match event {
            WatchEvent::Init => {
                self.building = Some(HashMap::new());
                Some(Vec::new())
            }
            WatchEvent::InitApply(o) => {
                self.building
                    .get_or_insert_with(HashMap::new)
                    .insert(key(&o), o);
                Some(Vec::new())
            }
            WatchEvent::InitDone => {
                self.objects = self.building.take().unwrap_or_default();
                self.synced = true;
                None
            }
            WatchEvent::Apply(o) => {
                let k = key(&o);
                self.objects.insert(k.clone(), o);
                Some(vec![k])
            }
            WatchEvent::Delete(o) => {
                self.objects.remove(&key(&o));
                Some(Vec::new())
            }
        }
    }
}

fn pvc_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The namespace/name of the PV's claim.
fn claim_of(pv: &PersistentVolume) -> Option<String> {
    let c = pv.spec.as_ref()?.claim_ref.as_ref()?;
    Some(pvc_key(c.namespace.as_deref()?, c.name.as_deref()?))
}

/// The field manager that last set the PVC's tier annotation, when the API says.
fn annotation_manager(pvc: &PvcMeta) -> Option<String> {
    let managed = pvc.metadata.managed_fields.as_ref()?;
    managed
        .iter()
        .rev()
        .find(|m| {
            m.fields_v1.as_ref().is_some_and(|f| {
                f.0.get("f:metadata")
                    .and_then(|m| m.get("f:annotations"))
                    .and_then(|a| a.get(format!("f:{}", keys::TIER)))
                    .is_some()
            })
        })
        .and_then(|m| m.manager.clone())
}

struct Retierer {
    driver: Driver,
    settings: Settings,
    pvs: Api<PersistentVolume>,
    vacs: Api<VolumeAttributesClass>,
    recorder: Recorder,
    pv_cache: Cache<PersistentVolume>,
    pvc_cache: Cache<PvcMeta>,
    /// Refused annotation values already reported, by PVC UID, so a resync does not
    /// repeat the Event.
    refused: HashMap<String, String>,
    /// Volumes to try again, by PV name.
    retry: HashMap<String, Instant>,
}

/// Runs until the watch streams end (they retry with backoff on errors: forever).
pub async fn run(client: Client, driver: Driver, settings: Settings) {
    let pv_stream = watcher::watcher(
        Api::<PersistentVolume>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let pvc_stream = watcher::watcher(
        Api::<PvcMeta>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .boxed();
    let mut r = Retierer {
        driver,
        pvs: Api::all(client.clone()),
        vacs: Api::all(client.clone()),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: "iolane-node".to_owned(),
                instance: settings.instance.clone(),
            },
        ),
        settings,
        pv_cache: Cache::default(),
        pvc_cache: Cache::default(),
        refused: HashMap::new(),
        retry: HashMap::new(),
    };
    tracing::info!(node.id = %r.settings.node_id, "re-tiering watches PVs and PVCs");
    let (mut pv_stream, mut pvc_stream) = (pv_stream, pvc_stream);
    loop {
        let due = r.retry.values().copied().min();
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let todo: Option<Vec<String>> = tokio::select! {
            e = pv_stream.next() => match e {
                None => return,
                Some(Err(e)) => { tracing::warn!(error = %e, "PV watch failed, retrying"); Some(Vec::new()) }
                Some(Ok(e)) => {
                    let node = r.settings.node_id.clone();
                    let driver = r.settings.driver_name.clone();
                    // Only this node's PVs of this driver are kept.
                    let e = match e {
                        WatchEvent::Apply(pv) | WatchEvent::InitApply(pv)
                            if pv_node(&pv, &driver) != Some(node.as_str()) => {
                            r.pv_cache.objects.remove(&pv.name_any());
                            None
                        }
                        other => Some(other),
                    };
                    match e {
                        Some(e) => r.pv_cache.feed(e, ResourceExt::name_any),
                        None => Some(Vec::new()),
                    }
                }
            },
            e = pvc_stream.next() => match e {
                None => return,
                Some(Err(e)) => { tracing::warn!(error = %e, "PVC watch failed, retrying"); Some(Vec::new()) }
                Some(Ok(e)) => match r.pvc_cache.feed(e, |p| pvc_key(&p.namespace().unwrap_or_default(), &p.name_any())) {
                    None => None,
                    // A changed PVC: the PVs bound to it.
                    Some(keys) => Some(r.pv_cache.objects.values()
                        .filter(|pv| claim_of(pv).is_some_and(|c| keys.contains(&c)))
                        .map(ResourceExt::name_any)
                        .collect()),
                },
            },
            () = sleep => {
                let now = Instant::now();
                let due: Vec<String> = r.retry.iter().filter(|(_, at)| **at <= now).map(|(k, _)| k.clone()).collect();
                for k in &due { r.retry.remove(k); }
                Some(due)
            }
        };
        if !(r.pv_cache.synced && r.pvc_cache.synced) {
            continue;
        }
        let names: Vec<String> = match todo {
            Some(names) => names,
            None => r.pv_cache.objects.keys().cloned().collect(),
        };
        for name in names {
            let Some(pv) = r.pv_cache.objects.get(&name).cloned() else {
                continue;
            };
            if let Err(why) = r.sync(&pv).await {
                tracing::warn!(pv = %name, error = %why, "re-tiering failed; retrying");
                r.retry.insert(name, Instant::now() + RETRY);
            }
        }
    }
}

impl Retierer {
    /// Brings one PV's volume to the tier its layers resolve to, and acknowledges a
    /// pending generation. `Err` means: try again later.
    async fn sync(&mut self, pv: &PersistentVolume) -> Result<(), String> {
        let Some(id) = pv
            .spec
            .as_ref()
            .and_then(|s| s.csi.as_ref())
            .map(|c| c.volume_handle.clone())
        else {
            return Ok(());
        };
        let name = pv.name_any();
        let Some(volume) = self
            .driver
            .stored_volume(&id)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(()); // Pinned here, but not (or no longer) a volume of this node.
        };
        let state = match PvState::of(pv.metadata.annotations.as_ref()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(pv = %name, error = %e, "ignoring malformed re-tiering annotations");
                return Ok(());
            }
        };
        let pending = state.pending().cloned();
        let pvc = claim_of(pv).and_then(|k| self.pvc_cache.objects.get(&k).cloned());
        let pvc_tier = pvc
            .as_ref()
            .and_then(|p| p.metadata.annotations.as_ref())
            .and_then(|a| a.get(keys::TIER))
            .cloned();
        let mutable = match &state.desired {
            Some(d) => Some(d.parameters.clone()),
            None => self.vac_parameters(pv).await?,
        };
        let driver = self.driver.clone();
        let tiering = driver.tiering();
        let resolved =
            match tiering.resolve_layers(&volume.parameters, pvc_tier.as_deref(), mutable.as_ref())
            {
                Err(ResolveError::NotAllowed { field, reason }) => {
                    if let Some(p) = &pvc {
                        self.report_refused(
                            p,
                            pvc_tier.as_deref().unwrap_or(""),
                            &format!("{field}: {reason}"),
                        )
                        .await;
                    }
                    // Nothing changes for the refused value: the PVC layer keeps what the
                    // volume has, when that is a tier the class allows.
                    let keep = volume.tier.as_ref().map(|t| t.name.as_str());
                    tiering
                        .resolve_layers(&volume.parameters, keep, mutable.as_ref())
                        .or_else(|_| {
                            tiering.resolve_layers(&volume.parameters, None, mutable.as_ref())
                        })
                }
                other => {
                    if let Some(uid) = pvc.as_ref().and_then(|p| p.metadata.uid.clone()) {
                        self.refused.remove(&uid);
                    }
                    other
                }
            };
        let tier: ResolvedTier = match resolved {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(pv = %name, volume.id = %id, error = %e, "cannot resolve the volume's tier");
                if let Some(d) = &pending {
                    self.patch(&name, refuse_patch(d.generation, &e.to_string()))
                        .await?;
                    self.event(
                        pv,
                        pvc.as_ref(),
                        EventType::Warning,
                        REASON_REFUSED,
                        format!("generation {} refused: {e}", d.generation),
                    )
                    .await;
                }
                return Ok(());
            }
        };
        match self.driver.retier(&id, &tier).await {
            Ok(Some(changed)) => {
                let who = match &pending {
                    Some(d) => format!(
                        "{} (generation {})",
                        d.by.as_deref().unwrap_or("ControllerModifyVolume"),
                        d.generation
                    ),
                    None => match pvc.as_ref().and_then(annotation_manager) {
                        Some(m) => format!("PVC annotation {} set by {m}", keys::TIER),
                        None => format!("PVC annotation {}", keys::TIER),
                    },
                };
                self.event(
                    pv,
                    pvc.as_ref(),
                    EventType::Normal,
                    REASON_CHANGED,
                    format!(
                        "tier {} -> {}, asked by {who}; {} publication(s) re-capped",
                        changed.from, changed.to, changed.publications
                    ),
                )
                .await;
            }
            Ok(None) => {}
            Err(Error::VolumeNotFound(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        if let Some(d) = &pending {
            self.patch(&name, ack_patch(d.generation)).await?;
            tracing::info!(pv = %name, volume.id = %id, generation = d.generation, tier = %tier.name, "acknowledged");
        }
        Ok(())
    }

    /// The parameters of the VolumeAttributesClass the PV names (a class given at
    /// creation, before any ControllerModifyVolume was recorded).
    async fn vac_parameters(
        &self,
        pv: &PersistentVolume,
    ) -> Result<Option<BTreeMap<String, String>>, String> {
        let Some(class) = pv
            .spec
            .as_ref()
            .and_then(|s| s.volume_attributes_class_name.as_deref())
        else {
            return Ok(None);
        };
        match self.vacs.get_opt(class).await {
            Ok(Some(vac)) => Ok(Some(vac.parameters.unwrap_or_default())),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("reading VolumeAttributesClass {class}: {e}")),
        }
    }

    async fn patch(&self, name: &str, patch: serde_json::Value) -> Result<(), String> {
        self.pvs
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map(|_| ())
            .map_err(|e| format!("patching PV {name}: {e}"))
    }

    /// A Warning Event on the PVC for a refused annotation value, once per value.
    async fn report_refused(&mut self, pvc: &PvcMeta, value: &str, why: &str) {
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        if self.refused.get(&uid).is_some_and(|v| v == value) {
            return;
        }
        self.refused.insert(uid, value.to_owned());
        tracing::warn!(pvc = %pvc.name_any(), value, reason = why, "PVC tier annotation refused");
        self.publish(
            &pvc.object_ref(&()),
            EventType::Warning,
            REASON_REFUSED,
            format!(
                "{} {value:?} refused, the tier is unchanged: {why}",
                keys::TIER
            ),
        )
        .await;
    }

    /// An Event on the PVC (or the PV when it has none).
    async fn event(
        &self,
        pv: &PersistentVolume,
        pvc: Option<&PvcMeta>,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let reference = match pvc {
            Some(p) => p.object_ref(&()),
            None => pv.object_ref(&()),
        };
        self.publish(&reference, type_, reason, note).await;
    }

    async fn publish(
        &self,
        reference: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note),
            action: "Retier".to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, reference).await {
            tracing::warn!(object.name = ?reference.name, error = %e, "cannot write event");
        }
    }
}
