//! One campaign client: cycles volumes through every call, retrying each until it
//! succeeds, and records in the model what was acknowledged. It parks between steps while
//! the round loop checks the node.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use iolane_tests::csi;
use iolane_tests::{
    connect_with_timeout, create_request, mount_cap, pattern, publish_request, read_prefix,
    round_up, size_unit, stage_request, unpublish_request, unstage_request, volume_id_for,
    write_synced,
};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::{DATA_LEN, POD_UID_KEY, Rng, Shared, TIER_KEY, Vol};

/// Deadline of a call outside cancel mode (the driver gives mkfs 300 s).
const RPC_TIMEOUT: Duration = Duration::from_secs(330);
/// A step that has not succeeded after this long is a violation (the node is stuck).
const STEP_DEADLINE: Duration = Duration::from_secs(240);
/// Pause between attempts.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// The steps of a cycle, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Stage,
    Publish,
    Write,
    Unpublish,
    Unstage,
    Restage,
    Republish,
    Verify,
    FinalUnpublish,
    FinalUnstage,
    Delete,
}

const CYCLE: [Step; 12] = [
    Step::Create,
    Step::Stage,
    Step::Publish,
    Step::Write,
    Step::Unpublish,
    Step::Unstage,
    Step::Restage,
    Step::Republish,
    Step::Verify,
    Step::FinalUnpublish,
    Step::FinalUnstage,
    Step::Delete,
];

struct Client {
    shared: Arc<Shared>,
    k: usize,
    rng: Rng,
    channel: Option<Channel>,
}

/// Runs client `k` until [`Shared::stop`] is set (at the end of a cycle) or a step is
/// stuck.
pub(super) async fn run(shared: Arc<Shared>, k: usize, seed: u64) {
    let mut c = Client {
        shared,
        k,
        rng: Rng::new(seed),
        channel: None,
    };
    for n in 0.. {
        if c.shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let name = format!("campaign-{k}-{n}");
        // Half the volumes name the tier; the others get it as the only (default) tier.
        let tier = k.is_multiple_of(2).then_some("batch");
        let size = round_up(
            i64::try_from(16 + c.rng.range(0, 16)).unwrap_or(16) << 20,
            size_unit(),
        );
        for step in CYCLE {
            c.shared.park_here().await;
            if !c.step(step, &name, tier, size).await {
                return;
            }
        }
        c.shared.model().cycles += 1;
    }
}

impl Client {
    fn vol(&self) -> Vol {
        self.shared.model().clients[self.k]
            .clone()
            .expect("the client holds a volume after Create")
    }

    fn set(&self, f: impl FnOnce(&mut Option<Vol>)) {
        f(&mut self.shared.model().clients[self.k]);
    }

    fn staging(&self, name: &str) -> String {
        self.shared
            .root
            .join("staging")
            .join(name)
            .display()
            .to_string()
    }

    fn target(&self, name: &str) -> String {
        self.shared.target(self.k, name).display().to_string()
    }

    /// Runs one step to success; false if it is stuck (recorded as a violation).
    async fn step(
        &mut self,
        step: Step,
        name: &str,
        tier: Option<&'static str>,
        size: i64,
    ) -> bool {
        let cap = mount_cap("ext4");
        let what = format!("client {} {step:?} {name}", self.k);
        match step {
            Step::Create => {
                let mut req = create_request(name, vec![cap], size, 0);
                if let Some(t) = tier {
                    req.parameters.insert(TIER_KEY.into(), t.into());
                }
                let Some(r) = self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::controller_client::ControllerClient::new(ch)
                                .create_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                else {
                    return false;
                };
                let v = r.volume.unwrap_or_default();
                if v.capacity_bytes < size {
                    self.shared.violation(format!(
                        "{what}: {} bytes for a request of {size}",
                        v.capacity_bytes
                    ));
                }
                if v.volume_id != volume_id_for(name) {
                    self.shared.violation(format!(
                        "{what}: returned id {}, expected {}",
                        v.volume_id,
                        volume_id_for(name)
                    ));
                }
                self.set(|s| {
                    *s = Some(Vol {
                        name: name.to_owned(),
                        id: v.volume_id.clone(),
                        size: v.capacity_bytes,
                        tier: Some("batch"),
                        context: v.volume_context.clone(),
                        staged: false,
                        published: false,
                        data: None,
                    });
                });
            }
            Step::Stage | Step::Restage => {
                let v = self.vol();
                let staging = self.staging(name);
                std::fs::create_dir_all(&staging).expect("create staging directory");
                let req = stage_request(&v.id, &staging, &cap);
                if self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::node_client::NodeClient::new(ch)
                                .node_stage_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                self.set(|s| s.as_mut().expect("volume").staged = true);
            }
            Step::Publish | Step::Republish => {
                let v = self.vol();
                let target = self.target(name);
                // kubelet makes the parent of the target; NodePublish the target itself.
                if let Some(parent) = Path::new(&target).parent() {
                    std::fs::create_dir_all(parent).expect("create the target's parent");
                }
                let mut req = publish_request(&v.id, &self.staging(name), &target, &cap, false);
                req.volume_context = v.context.clone();
                req.volume_context
                    .insert(POD_UID_KEY.into(), self.shared.pod_uids[self.k].clone());
                if self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::node_client::NodeClient::new(ch)
                                .node_publish_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                self.set(|s| s.as_mut().expect("volume").published = true);
            }
            Step::Write => {
                let seed = self.rng.next();
                let file = Path::new(&self.target(name)).join("data");
                if let Err(e) = write_synced(&file, &pattern(seed, DATA_LEN)) {
                    self.shared
                        .violation(format!("{what}: writing {}: {e}", file.display()));
                    return false;
                }
                self.set(|s| s.as_mut().expect("volume").data = Some(seed));
            }
            Step::Verify => {
                let v = self.vol();
                let file = Path::new(&self.target(name)).join("data");
                let seed = v.data.expect("data written");
                match read_prefix(&file, DATA_LEN) {
                    Ok(b) if b == pattern(seed, DATA_LEN) => self.shared.model().verified += 1,
                    Ok(_) => self
                        .shared
                        .violation(format!("{what}: {} reads back other data", file.display())),
                    Err(e) => self
                        .shared
                        .violation(format!("{what}: reading {}: {e}", file.display())),
                }
            }
            Step::Unpublish | Step::FinalUnpublish => {
                let v = self.vol();
                let req = unpublish_request(&v.id, &self.target(name));
                if self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::node_client::NodeClient::new(ch)
                                .node_unpublish_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                self.set(|s| s.as_mut().expect("volume").published = false);
            }
            Step::Unstage | Step::FinalUnstage => {
                let v = self.vol();
                let req = unstage_request(&v.id, &self.staging(name));
                if self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::node_client::NodeClient::new(ch)
                                .node_unstage_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                self.set(|s| s.as_mut().expect("volume").staged = false);
            }
            Step::Delete => {
                let v = self.vol();
                let req = csi::DeleteVolumeRequest {
                    volume_id: v.id.clone(),
                    ..Default::default()
                };
                if self
                    .call(&what, |ch| {
                        let req = req.clone();
                        async move {
                            csi::controller_client::ControllerClient::new(ch)
                                .delete_volume(req)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await
                    .is_none()
                {
                    return false;
                }
                let mut m = self.shared.model();
                m.deleted.insert(v.id.clone());
                m.clients[self.k] = None;
            }
        }
        true
    }

    /// Calls `f` until it succeeds: a new connection after a transport error, a random
    /// client-side deadline in cancel mode. `None` if it is still failing after
    /// [`STEP_DEADLINE`] (recorded as a violation).
    async fn call<T, F, Fut>(&mut self, what: &str, f: F) -> Option<T>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < STEP_DEADLINE {
            let ch = match &self.channel {
                Some(ch) => ch.clone(),
                None => match connect_with_timeout(&self.shared.socket, RPC_TIMEOUT).await {
                    Ok(ch) => {
                        self.channel = Some(ch.clone());
                        ch
                    }
                    Err(e) => {
                        last = format!("connect: {e}");
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            // Once the round loop asks to park, the step is finished without more
            // cancelling, so the check comes soon (on lvm in the VM a call takes seconds).
            let cancel = self.shared.cancel_max_ms > 0 && !self.shared.pause.load(Ordering::SeqCst);
            let deadline = if cancel && self.rng.range(0, 3) > 0 {
                Duration::from_millis(self.rng.range(1, self.shared.cancel_max_ms))
            } else {
                RPC_TIMEOUT
            };
            let res = tokio::time::timeout(deadline, f(ch)).await;
            let status = match res {
                Ok(Ok(v)) => {
                    self.shared.model().calls_ok += 1;
                    return Some(v);
                }
                Ok(Err(s)) => s,
                Err(_) => {
                    self.shared.model().cancelled += 1;
                    continue;
                }
            };
            let code = status.code();
            {
                let mut m = self.shared.model();
                m.attempts_failed += 1;
                *m.codes.entry(format!("{code:?}")).or_default() += 1;
            }
            last = format!("{code:?}: {}", status.message());
            match code {
                // The driver is down or restarting, or the connection broke under the call.
                Code::Unavailable | Code::Unknown | Code::Cancelled => self.channel = None,
                // Another attempt of the same call (cancelled by this client) still runs.
                Code::Aborted | Code::DeadlineExceeded => {}
                _ => {
                    self.shared.violation(format!("{what}: {last}"));
                }
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        self.shared.violation(format!(
            "{what}: still failing after {STEP_DEADLINE:?}: {last}"
        ));
        None
    }
}
