//! ControllerModifyVolume of `iolane controller`: validate the request against the tiers
//! of the node config (the same ConfigMap the nodes read), record it on the volume's PV,
//! and wait, bounded, for the owning node to acknowledge its generation.
//!
//! Answers: OK only once the node applied it; INVALID_ARGUMENT naming the key for bad
//! parameters (nothing recorded) or when the node refused it; NOT_FOUND without a PV for
//! the volume; ABORTED when a request for other parameters replaced it while waiting;
//! UNAVAILABLE when the node did not answer in time (the request stays recorded, and
//! csi-resizer's retry finds it: same parameters, same generation, no new record).

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use iops_controller::TierSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim};
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::watcher::{self, Event as WatchEvent};
use kube::{Api, Client, ResourceExt};

use super::{Progress, PvState, progress, record_patch};
use crate::error::{Error, Result};
use crate::node_cleanup::pv_node;

/// Attempts at recording a request on a PV that keeps changing under it (409).
const RECORD_ATTEMPTS: usize = 5;

/// The controller's side of re-tiering.
#[derive(Clone)]
pub struct Modifier {
    client: Client,
    driver: String,
    tiers: TierSet,
    timeout: Duration,
}

impl std::fmt::Debug for Modifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modifier")
            .field("driver", &self.driver)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn api_error(what: &str, e: kube::Error) -> Error {
    match &e {
        kube::Error::Api(s) if s.code == 403 || s.code == 401 => {
            Error::FailedPrecondition(format!("{what}: not allowed: {}", s.message))
        }
        _ => Error::NotReady(format!("{what}: {e}")),
    }
}

impl Modifier {
    /// `timeout` bounds the wait for the node's acknowledgement.
    pub fn new(client: Client, driver: String, tiers: TierSet, timeout: Duration) -> Self {
        Modifier {
            client,
            driver,
            tiers,
            timeout,
        }
    }

    /// Checks keys and tier names: INVALID_ARGUMENT naming the key.
    pub fn validate(&self, parameters: &BTreeMap<String, String>) -> Result<()> {
        iops_controller::resolve::check(
            &self.tiers,
            &iops_controller::ClassTier::default(),
            Some(parameters),
        )?;
        Ok(())
    }

    /// The whole request: validate, record (or find the record), wait.
    pub async fn modify(&self, id: &str, parameters: BTreeMap<String, String>) -> Result<()> {
        self.validate(&parameters)?;
        let pvs: Api<PersistentVolume> = Api::all(self.client.clone());
        for _ in 0..RECORD_ATTEMPTS {
            let pv = self.find(&pvs, id).await?;
            let name = pv.name_any();
            let state =
                PvState::of(pv.metadata.annotations.as_ref()).map_err(Error::FailedPrecondition)?;
            let generation = match &state.desired {
                Some(d) if d.parameters == parameters => {
                    tracing::info!(volume.id = %id, pv = %name, generation = d.generation, "request already recorded");
                    d.generation
                }
                _ => {
                    let generation = state.next_generation();
                    let by = self.requester(&pv).await;
                    let patch = record_patch(
                        pv.metadata.resource_version.as_deref(),
                        generation,
                        &parameters,
                        by.as_deref(),
                    );
                    match pvs
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(s)) if s.code == 409 => continue,
                        Err(e) => return Err(api_error(&format!("recording on PV {name}"), e)),
                    }
                    tracing::info!(volume.id = %id, pv = %name, generation, ?parameters, "request recorded");
                    generation
                }
            };
            let node = pv_node(&pv, &self.driver).unwrap_or("?").to_owned();
            return self
                .wait(&pvs, id, &name, &node, generation, &parameters)
                .await;
        }
        Err(Error::InFlight(format!(
            "the PV of volume {id} changed under {RECORD_ATTEMPTS} attempts to record the request"
        )))
    }

    /// The PV whose CSI volume handle is `id` (of this driver).
    async fn find(&self, pvs: &Api<PersistentVolume>, id: &str) -> Result<PersistentVolume> {
        let list = pvs
            .list(&ListParams::default())
            .await
            .map_err(|e| api_error("listing PVs", e))?;
        list.items
            .into_iter()
            .find(|pv| {
                pv.spec
                    .as_ref()
                    .and_then(|s| s.csi.as_ref())
                    .is_some_and(|c| c.driver == self.driver && c.volume_handle == id)
            })
            .ok_or_else(|| {
                Error::VolumeNotFound(format!("{id}: no PersistentVolume has this handle"))
            })
    }

    /// "VolumeAttributesClass NAME" when the PV's claim names one (csi-resizer acts on it).
    async fn requester(&self, pv: &PersistentVolume) -> Option<String> {
        let claim = pv.spec.as_ref()?.claim_ref.as_ref()?;
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), claim.namespace.as_deref()?);
        let pvc = api.get_opt(claim.name.as_deref()?).await.ok()??;
        let vac = pvc.spec?.volume_attributes_class_name?;
        Some(format!("VolumeAttributesClass {vac}"))
    }

    async fn wait(
        &self,
        pvs: &Api<PersistentVolume>,
        id: &str,
        name: &str,
        node: &str,
        generation: u64,
        parameters: &BTreeMap<String, String>,
    ) -> Result<()> {
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher::watcher(pvs.clone(), config).boxed();
        let deadline = tokio::time::sleep(self.timeout);
        tokio::pin!(deadline);
        let mut target = generation;
        loop {
            let event = tokio::select! {
                () = &mut deadline => {
                    return Err(Error::NotReady(format!(
                        "node {node} has not applied generation {target} of volume {id} \
                         within {}s; the request stays recorded on PV {name}",
                        self.timeout.as_secs_f64()
                    )));
                }
                e = stream.next() => e,
            };
            let pv = match event {
                None => return Err(Error::NotReady(format!("the watch of PV {name} ended"))),
                Some(Err(e)) => {
                    tracing::debug!(pv = %name, error = %e, "PV watch error, retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Some(Ok(WatchEvent::Apply(pv) | WatchEvent::InitApply(pv))) => pv,
                Some(Ok(WatchEvent::Delete(_))) => {
                    return Err(Error::VolumeNotFound(format!(
                        "{id}: PV {name} was deleted"
                    )));
                }
                Some(Ok(WatchEvent::Init | WatchEvent::InitDone)) => continue,
            };
            let state =
                PvState::of(pv.metadata.annotations.as_ref()).map_err(Error::FailedPrecondition)?;
            match progress(&state, generation, parameters) {
                Progress::Applied => {
                    tracing::info!(volume.id = %id, pv = %name, generation = target, "node applied the request");
                    return Ok(());
                }
                Progress::Refused(why) => {
                    return Err(Error::invalid(
                        "mutable_parameters",
                        format!("node {node} refused generation {target}: {why}"),
                    ));
                }
                Progress::Superseded => {
                    return Err(Error::InFlight(format!(
                        "a request for other parameters replaced this one on PV {name}"
                    )));
                }
                Progress::Waiting(g) => target = g,
            }
        }
    }
}
