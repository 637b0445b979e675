//! The node cleanup loop: a watcher on Node objects, a pass over the driver's PVs at start
//! and every resync period (PVs whose node no longer exists), and the API calls that carry
//! out the policy of `mod.rs` (Events, deletions, finalizer patches).
//!
//! A Node seen deleted (or missing in a pass) is acted on after the grace period, and only
//! if a GET still answers 404 then: a kubelet that re-registers its Node in the meantime
//! keeps its volumes. Every call is idempotent (404 counts as done), so a second replica or
//! a restart half-way through does no harm; a failed node is retried after [`RETRY`].

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::{WatchStreamExt, watcher::Event as WatchEvent};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::{
    ClaimRef, Decision, Mode, PV_FINALIZERS, PVC_FINALIZERS, REASON, claim_is_bound, decide,
    finalizer_patch, pv_node, pv_note, pvc_note,
};

/// How long after a failed attempt a node is tried again.
pub const RETRY: Duration = Duration::from_secs(30);
/// Attempts at a finalizer patch that the API server refuses with 409 (the object changed).
const PATCH_ATTEMPTS: usize = 5;

/// What the loop needs besides the client.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `DryRun` or `On` (`Off` never starts the loop).
    pub mode: Mode,
    /// The CSI driver name whose PVs are iolane's.
    pub driver: String,
    /// How long a Node must stay deleted before its volumes are handled.
    pub grace: Duration,
    /// Time between two passes over all PVs.
    pub resync: Duration,
    /// The reporting instance in Events (the Pod name, from `POD_NAME`).
    pub instance: Option<String>,
}

/// Runs until the watch stream ends (it retries with backoff on errors, so: forever).
pub async fn run(client: Client, settings: Settings) {
    let cleaner = Cleaner {
        nodes: Api::all(client.clone()),
        pvs: Api::all(client.clone()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "iolane-controller".to_owned(),
                instance: settings.instance.clone(),
            },
        ),
        client,
        settings,
    };
    tracing::info!(
        mode = ?cleaner.settings.mode,
        grace_s = cleaner.settings.grace.as_secs(),
        resync_s = cleaner.settings.resync.as_secs(),
        "node cleanup watching nodes"
    );
    let mut stream = watcher(cleaner.nodes.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut known: HashSet<String> = HashSet::new();
    let mut listing: HashSet<String> = HashSet::new();
    let mut synced = false;
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut next_resync = Instant::now() + cleaner.settings.resync;
    loop {
        let due = pending
            .values()
            .copied()
            .chain(synced.then_some(next_resync))
            .min();
        let sleep = async {
            match due {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = stream.next() => match event {
                None => return,
                Some(Err(e)) => tracing::warn!(error = %e, "node watch failed, retrying"),
                Some(Ok(WatchEvent::Init)) => listing.clear(),
                Some(Ok(WatchEvent::InitApply(node))) => {
                    listing.insert(node.name_any());
                }
                Some(Ok(WatchEvent::InitDone)) => {
                    known = std::mem::take(&mut listing);
                    synced = true;
                    cleaner.scan(&known, &mut pending).await;
                    next_resync = Instant::now() + cleaner.settings.resync;
                }
                Some(Ok(WatchEvent::Apply(node))) => {
                    let name = node.name_any();
                    if pending.remove(&name).is_some() {
                        tracing::info!(node.name = %name, "node is back, its volumes are kept");
                    }
                    known.insert(name);
                }
                Some(Ok(WatchEvent::Delete(node))) => {
                    let name = node.name_any();
                    tracing::info!(node.name = %name, "node deleted");
                    known.remove(&name);
                    pending.insert(name, Instant::now() + cleaner.settings.grace);
                }
            },
            () = sleep => {}
        }
        let now = Instant::now();
        if synced && now >= next_resync {
            cleaner.scan(&known, &mut pending).await;
            next_resync = now + cleaner.settings.resync;
        }
        let ready: Vec<String> = pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for node in ready {
            pending.remove(&node);
            if let Err(e) = cleaner.clean_node(&node).await {
                tracing::error!(node.name = %node, error = %e, "node cleanup failed, will retry");
                pending.insert(node, Instant::now() + RETRY);
            }
        }
    }
}

struct Cleaner {
    client: Client,
    nodes: Api<Node>,
    pvs: Api<PersistentVolume>,
    recorder: Recorder,
    settings: Settings,
}

impl Cleaner {
    /// Queues every node that the driver's PVs are pinned to and that is not in `known`.
    async fn scan(&self, known: &HashSet<String>, pending: &mut HashMap<String, Instant>) {
        let pvs = match self.pvs.list(&ListParams::default()).await {
            Ok(list) => list.items,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list persistentvolumes");
                return;
            }
        };
        let mut found = 0;
        for pv in &pvs {
            if let Some(node) = pv_node(pv, &self.settings.driver)
                && !known.contains(node)
            {
                found += 1;
                tracing::info!(node.name = node, pv.name = %pv.name_any(), "volume of a node that does not exist");
                if !pending.contains_key(node) {
                    pending.insert(node.to_owned(), Instant::now() + self.settings.grace);
                }
            }
        }
        tracing::info!(
            nodes = known.len(),
            persistentvolumes = pvs.len(),
            orphaned = found,
            "node cleanup pass done"
        );
    }

    /// Applies the policy to every PV of `node`, if the Node still does not exist.
    async fn clean_node(&self, node: &str) -> Result<(), kube::Error> {
        if self.nodes.get_opt(node).await?.is_some() {
            tracing::info!(node.name = node, "node exists again, its volumes are kept");
            return Ok(());
        }
        let pvs = self.pvs.list(&ListParams::default()).await?.items;
        let mine: Vec<&PersistentVolume> = pvs
            .iter()
            .filter(|pv| pv_node(pv, &self.settings.driver) == Some(node))
            .collect();
        tracing::info!(node.name = node, volumes = mine.len(), mode = ?self.settings.mode, "cleaning up after a deleted node");
        let mut first_error = None;
        for pv in mine {
            if let Err(e) = self.clean_pv(node, pv).await {
                tracing::error!(node.name = node, pv.name = %pv.name_any(), error = %e, "volume cleanup failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn clean_pv(&self, node: &str, pv: &PersistentVolume) -> Result<(), kube::Error> {
        let on = self.settings.mode == Mode::On;
        let pv_name = pv.name_any();
        let decision = decide(pv);
        if let Decision::Delete {
            claim: Some(claim), ..
        } = &decision
        {
            self.clean_pvc(node, &pv_name, claim).await?;
        }
        let note = pv_note(self.settings.mode, node, &decision);
        tracing::info!(node.name = node, pv.name = %pv_name, "{note}");
        let (event_type, action) = match (&decision, on) {
            (Decision::KeepRetained, _) => (EventType::Warning, "Keep"),
            (Decision::Delete { .. }, true) => (EventType::Warning, "Delete"),
            (Decision::Delete { .. }, false) => (EventType::Normal, "DryRunDelete"),
        };
        self.event(pv, event_type, action, note).await;
        if on && matches!(decision, Decision::Delete { .. }) {
            delete(&self.pvs, &pv_name, pv.metadata.uid.clone()).await?;
            remove_finalizers(&self.pvs, &pv_name, PV_FINALIZERS).await?;
        }
        Ok(())
    }

    async fn clean_pvc(
        &self,
        node: &str,
        pv_name: &str,
        claim: &ClaimRef,
    ) -> Result<(), kube::Error> {
        let pvcs: Api<PersistentVolumeClaim> =
            Api::namespaced(self.client.clone(), &claim.namespace);
        let Some(pvc) = pvcs.get_opt(&claim.name).await? else {
            return Ok(());
        };
        if !claim_is_bound(&pvc, claim, pv_name) {
            tracing::info!(pvc.namespace = %claim.namespace, pvc.name = %claim.name, pv.name = pv_name, "claim is not bound to the volume, left alone");
            return Ok(());
        }
        let note = pvc_note(self.settings.mode, node, pv_name);
        tracing::info!(pvc.namespace = %claim.namespace, pvc.name = %claim.name, "{note}");
        if self.settings.mode == Mode::On {
            self.event(&pvc, EventType::Warning, "Delete", note).await;
            delete(&pvcs, &claim.name, pvc.metadata.uid.clone()).await?;
            remove_finalizers(&pvcs, &claim.name, PVC_FINALIZERS).await?;
        } else {
            self.event(&pvc, EventType::Normal, "DryRunDelete", note)
                .await;
        }
        Ok(())
    }

    /// Writes an Event about `obj`; a failure is logged, not fatal.
    async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: REASON.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &obj.object_ref(&())).await {
            tracing::warn!(object.name = ?obj.meta().name, error = %e, "cannot write event");
        }
    }
}

/// Deletes `name` if it is still the object with `uid`; gone already counts as done.
async fn delete<K>(api: &Api<K>, name: &str, uid: Option<String>) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid,
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes `remove` from the object's finalizers (a merge patch guarded by its
/// resourceVersion, retried on 409); gone already counts as done.
async fn remove_finalizers<K>(api: &Api<K>, name: &str, remove: &[&str]) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let Some(obj) = api.get_opt(name).await? else {
            return Ok(());
        };
        let meta = obj.meta();
        let finalizers = meta.finalizers.clone().unwrap_or_default();
        let Some(patch) = finalizer_patch(&finalizers, meta.resource_version.as_deref(), remove)
        else {
            return Ok(());
        };
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < PATCH_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
}
