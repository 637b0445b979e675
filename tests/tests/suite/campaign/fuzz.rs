//! The gRPC fuzz campaign (issue 12, item 7): 10,000 random but well-formed requests
//! (`IOLANE_CAMPAIGN_FUZZ_REQUESTS`) across every RPC of the Identity, Controller and
//! Node services, sent by eight clients to the real `iolane node` over its socket. A
//! quarter of the requests carry one bad field (an ID that is not one, a relative or
//! `..` path, a missing or unsupported capability, an unknown parameter, a negative
//! size, ...; [`super::fuzzreq`]). Every request must be answered within
//! [`CALL_DEADLINE`]; a refusal must be a proper code with a message: INVALID_ARGUMENT
//! naming the bad field (OUT_OF_RANGE for a required size above its limit), and never
//! UNKNOWN or INTERNAL for a well-formed request either. Each client owns one volume slot
//! and records in the campaign model what the node acknowledged, so the invariants of
//! [`check`] hold after each round; at the end every client deletes what it made and
//! nothing may be left (no image, loop device, mount or `io.max` line), the process must
//! still be the one started, and its log must hold no panic.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use iolane_tests::{connect_with_timeout, csi, note, require_root, volume_id_for};
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::fuzzreq::{Expect, Sent};
use super::{CLIENTS, Rng, Shared, TIER_KEY, Vol, env_u64, finish, report, seed, start};

/// Every call must be answered within this (a stage runs mkfs on a small image).
pub(super) const CALL_DEADLINE: Duration = Duration::from_secs(60);
/// Invariant checks during the campaign (one more at the end).
const ROUNDS: u64 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_fuzz_campaign_answers_every_request_properly() {
    require_root!();
    let seed = seed();
    let total = env_u64("IOLANE_CAMPAIGN_FUZZ_REQUESTS", 10_000);
    note(format!(
        "campaign grpc-fuzz: seed {seed} (IOLANE_CAMPAIGN_SEED={seed} replays it), {total} requests from {CLIENTS} clients"
    ));
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let (mut d, shared, _cg) = start(0).await;
    let pid = d.pid().expect("the driver runs");
    let issued = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (shared, issued, seed) = (shared.clone(), issued.clone(), rng.next());
            tokio::spawn(async move {
                let mut c = Client::new(shared.clone(), k, seed).await;
                c.run(&issued, total).await;
                // A client that is done counts as parked for the checks still to come.
                shared.parked.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();
    for round in 1..=ROUNDS {
        let at = total * round / (ROUNDS + 1);
        while issued.load(Ordering::SeqCst) < at {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !shared
            .checkpoint(&mut d, None, &format!("round {round}"), "")
            .await
        {
            break;
        }
    }
    finish(&mut d, &shared, clients, None).await;
    if !std::path::Path::new(&format!("/proc/{pid}")).exists() || d.pid() != Some(pid) {
        shared.violation("end: the driver process is gone".to_owned());
    }
    let log = d.log();
    if let Some(line) = log.lines().find(|l| l.contains("panicked")) {
        shared.violation(format!("end: the driver's log has a panic: {line}"));
    }
    report(
        "grpc-fuzz",
        seed,
        &format!("requests={total}"),
        &shared,
        started,
    );
}

/// One fuzzing client: owns volume slot `k` (`fuzz-<k>-<generation>`).
pub(super) struct Client {
    pub(super) shared: Arc<Shared>,
    pub(super) k: usize,
    pub(super) rng: Rng,
    channel: Channel,
    /// Bumped when the slot's volume is deleted, so the next one has a new name.
    generation: u64,
}

impl Client {
    async fn new(shared: Arc<Shared>, k: usize, seed: u64) -> Client {
        let channel = connect_with_timeout(&shared.socket, CALL_DEADLINE)
            .await
            .expect("connect to the driver");
        Client {
            shared,
            k,
            rng: Rng::new(seed),
            channel,
            generation: 0,
        }
    }

    async fn run(&mut self, issued: &AtomicU64, total: u64) {
        loop {
            self.shared.park_here().await;
            if issued.fetch_add(1, Ordering::SeqCst) >= total {
                break;
            }
            self.one().await;
        }
        self.clean_up().await;
    }

    pub(super) fn name(&self) -> String {
        format!("fuzz-{}-{}", self.k, self.generation)
    }

    pub(super) fn id(&self) -> String {
        volume_id_for(&self.name())
    }

    /// The slot's volume as acknowledged, if any.
    pub(super) fn vol(&self) -> Option<Vol> {
        self.shared.model().clients[self.k].clone()
    }

    pub(super) fn set(&self, f: impl FnOnce(&mut Option<Vol>)) {
        f(&mut self.shared.model().clients[self.k]);
    }

    pub(super) fn staging(&self) -> String {
        let p = self.shared.root.join("staging").join(self.name());
        std::fs::create_dir_all(&p).expect("create staging directory");
        p.display().to_string()
    }

    /// The kubelet-shaped target; its parent exists, as kubelet makes it.
    pub(super) fn target(&self) -> String {
        let p = self.shared.target(self.k, &self.name());
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("create the target's parent");
        }
        p.display().to_string()
    }

    /// The volume context NodePublish gets: CreateVolume's and the pod's UID.
    pub(super) fn publish_context(&self) -> HashMap<String, String> {
        let mut ctx = self.vol().map(|v| v.context).unwrap_or_default();
        ctx.insert(
            super::POD_UID_KEY.to_owned(),
            self.shared.pod_uids[self.k].clone(),
        );
        ctx
    }

    /// Sends one call and checks its answer against `expect`; the reply when it is OK.
    pub(super) async fn call<T, Fut>(
        &self,
        sent: &Sent,
        f: impl FnOnce(Channel) -> Fut,
    ) -> Option<T>
    where
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let what = format!("client {} {}", self.k, sent.describe());
        let answer = tokio::time::timeout(CALL_DEADLINE, f(self.channel.clone())).await;
        let status = match answer {
            Err(_) => {
                self.shared
                    .violation(format!("{what}: no answer within {CALL_DEADLINE:?}"));
                return None;
            }
            Ok(Ok(reply)) => {
                self.shared.model().calls_ok += 1;
                match sent.expect {
                    Expect::Answer => return Some(reply.into_inner()),
                    _ => {
                        self.shared.violation(format!("{what}: answered OK"));
                        return None;
                    }
                }
            }
            Ok(Err(s)) => s,
        };
        let code = status.code();
        let msg = status.message();
        let host_refused = code == Code::Internal
            && matches!(sent.expect, Expect::Answer)
            && sent.host_refusal.is_some_and(|h| msg.contains(h));
        {
            let mut m = self.shared.model();
            m.attempts_failed += 1;
            let key = if host_refused {
                "HostRefused".to_owned()
            } else {
                format!("{code:?}")
            };
            *m.codes.entry(key).or_default() += 1;
        }
        if host_refused {
            return None;
        }
        let bad = match sent.expect {
            _ if msg.is_empty() => Some("no message".to_owned()),
            _ if matches!(code, Code::Unknown | Code::Internal | Code::DataLoss) => {
                Some("not a proper code".to_owned())
            }
            Expect::Answer => matches!(code, Code::InvalidArgument | Code::Unimplemented)
                .then(|| "refused a well-formed request".to_owned()),
            Expect::Invalid(field) => (code != Code::InvalidArgument || !msg.contains(field))
                .then(|| format!("expected INVALID_ARGUMENT naming {field:?}")),
            Expect::Code(want) => (code != want).then(|| format!("expected {want:?}")),
        };
        if let Some(why) = bad {
            self.shared
                .violation(format!("{what}: {why}, got {code:?}: {msg}"));
        }
        None
    }

    /// The slot's volume acknowledged created with this reply.
    pub(super) fn created(&self, v: &csi::Volume) {
        let tier = match v.volume_context.get(TIER_KEY).map(String::as_str) {
            None => None,
            Some("batch") => Some("batch"),
            Some("gold") => Some("gold"),
            Some(other) => {
                self.shared.violation(format!(
                    "client {}: CreateVolume gave {} the tier {other:?}, which was not asked for",
                    self.k, v.volume_id
                ));
                None
            }
        };
        self.set(|s| {
            if s.is_none() {
                *s = Some(Vol {
                    name: self.name(),
                    id: v.volume_id.clone(),
                    size: v.capacity_bytes,
                    tier,
                    context: v.volume_context.clone(),
                    staged: false,
                    published: false,
                    data: None,
                });
            }
        });
    }

    /// The slot's volume acknowledged deleted: the next one gets a new name.
    pub(super) fn deleted(&mut self) {
        let gone = self.shared.model().clients[self.k].take();
        if let Some(v) = gone {
            self.shared.model().deleted.insert(v.id);
            self.generation += 1;
        }
    }

    /// Unpublishes, unstages and deletes the slot's volume, each retried until it is
    /// acknowledged (or the deadline passes: a violation).
    async fn clean_up(&mut self) {
        let end = Instant::now() + CALL_DEADLINE * 2;
        while let Some(v) = self.vol() {
            self.shared.park_here().await;
            if Instant::now() > end {
                self.shared.violation(format!(
                    "client {}: could not clean up {} ({}): staged {}, published {}",
                    self.k, v.id, v.name, v.staged, v.published
                ));
                return;
            }
            let sent = Sent::well_formed("clean-up");
            if v.published {
                let req = csi::NodeUnpublishVolumeRequest {
                    volume_id: v.id.clone(),
                    target_path: self.target(),
                };
                if self
                    .call(&sent, |ch| async move {
                        csi::node_client::NodeClient::new(ch)
                            .node_unpublish_volume(req)
                            .await
                    })
                    .await
                    .is_some()
                {
                    self.set(|s| s.as_mut().expect("volume").published = false);
                }
            } else if v.staged {
                let req = csi::NodeUnstageVolumeRequest {
                    volume_id: v.id.clone(),
                    staging_target_path: self.staging(),
                };
                if self
                    .call(&sent, |ch| async move {
                        csi::node_client::NodeClient::new(ch)
                            .node_unstage_volume(req)
                            .await
                    })
                    .await
                    .is_some()
                {
                    self.set(|s| s.as_mut().expect("volume").staged = false);
                }
            } else {
                let req = csi::DeleteVolumeRequest {
                    volume_id: v.id.clone(),
                    ..Default::default()
                };
                if self
                    .call(&sent, |ch| async move {
                        csi::controller_client::ControllerClient::new(ch)
                            .delete_volume(req)
                            .await
                    })
                    .await
                    .is_some()
                {
                    self.deleted();
                }
            }
        }
    }
}
