//! The gRPC fuzz campaign's requests: one RPC of the three CSI services picked at random,
//! built well-formed for the client's volume slot, and in a quarter of the cases given one
//! bad field with the answer that field must get. What the node acknowledges goes into the
//! campaign model ([`super::fuzz::Client`]).

use std::collections::HashMap;

use iolane_tests::csi;
use iolane_tests::{capability, mount_cap, round_up, size_unit};
use tonic::Code;

use csi::identity_client::IdentityClient;
use csi::volume_capability::access_mode::Mode;
use csi::volume_capability::{AccessType, MountVolume};

use super::TIER_KEY;
use super::fuzz::Client;

/// What the answer to a request must be.
#[derive(Debug, Clone, Copy)]
pub(super) enum Expect {
    /// Well-formed: OK, or a refusal that says why in a proper code (NOT_FOUND,
    /// FAILED_PRECONDITION, ALREADY_EXISTS, ...), never INVALID_ARGUMENT or UNIMPLEMENTED.
    Answer,
    /// One field is bad: INVALID_ARGUMENT with a message naming it.
    Invalid(&'static str),
    /// Exactly this code.
    Code(Code),
}

/// A request as sent: its RPC, the bad field if any, and the answer it must get.
#[derive(Debug, Clone)]
pub(super) struct Sent {
    pub(super) rpc: &'static str,
    bad: Option<String>,
    pub(super) expect: Expect,
    /// An INTERNAL answer whose message holds this is the host's refusal, not the
    /// driver's fault (online ext4 resize without `CAP_SYS_RESOURCE`).
    pub(super) host_refusal: Option<&'static str>,
}

impl Sent {
    pub(super) fn well_formed(rpc: &'static str) -> Sent {
        Sent {
            rpc,
            bad: None,
            expect: Expect::Answer,
            host_refusal: None,
        }
    }

    pub(super) fn describe(&self) -> String {
        match &self.bad {
            None => self.rpc.to_owned(),
            Some(b) => format!("{} with {b}", self.rpc),
        }
    }

    pub(super) fn spoil(&mut self, bad: String, expect: Expect) {
        self.bad = Some(bad);
        self.expect = expect;
    }
}

/// Bad volume IDs.
const BAD_IDS: [&str; 5] = ["", "../etc", "a/b", "-lead", "sp ace"];
/// Bad paths, relative to a good one (`{}`).
const BAD_PATHS: [&str; 4] = ["", "relative/dir", "{}/../escape", "{}/./dot"];

/// The RPCs, with how often each is picked.
const RPCS: [(&str, u64); 26] = [
    ("GetPluginInfo", 1),
    ("GetPluginCapabilities", 1),
    ("Probe", 1),
    ("CreateVolume", 6),
    ("DeleteVolume", 2),
    ("ControllerPublishVolume", 1),
    ("ControllerUnpublishVolume", 1),
    ("ValidateVolumeCapabilities", 2),
    ("ListVolumes", 2),
    ("GetCapacity", 2),
    ("ControllerGetCapabilities", 1),
    ("CreateSnapshot", 1),
    ("DeleteSnapshot", 1),
    ("ListSnapshots", 1),
    ("GetSnapshot", 1),
    ("ControllerExpandVolume", 2),
    ("ControllerGetVolume", 2),
    ("ControllerModifyVolume", 2),
    ("NodeStageVolume", 6),
    ("NodeUnstageVolume", 3),
    ("NodePublishVolume", 6),
    ("NodeUnpublishVolume", 3),
    ("NodeGetVolumeStats", 2),
    ("NodeExpandVolume", 2),
    ("NodeGetCapabilities", 1),
    ("NodeGetInfo", 1),
];

impl Client {
    pub(super) fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        let n = u64::try_from(from.len()).expect("small");
        from[usize::try_from(self.rng.range(0, n - 1)).expect("small")]
    }

    /// True with probability `1/n`.
    pub(super) fn one_in(&mut self, n: u64) -> bool {
        self.rng.range(1, n) == 1
    }

    /// The slot's volume ID, or (when the request is spoilt) a bad one.
    pub(super) fn vol_id(&mut self, sent: &mut Sent, spoil: bool) -> String {
        if spoil {
            let bad = self.pick(&BAD_IDS);
            sent.spoil(format!("volume_id {bad:?}"), Expect::Invalid("volume_id"));
            bad.to_owned()
        } else {
            self.id()
        }
    }

    pub(super) fn bad_path(&mut self, sent: &mut Sent, field: &'static str, good: &str) -> String {
        let bad = self.pick(&BAD_PATHS).replace("{}", good);
        // A stats or expand path that is not absolute is a path where the volume is not
        // (csi-sanity asks for NOT_FOUND there).
        let expect = if field == "volume_path" && !bad.is_empty() && !bad.starts_with('/') {
            Expect::Code(Code::NotFound)
        } else {
            Expect::Invalid(field)
        };
        sent.spoil(format!("{field} {bad:?}"), expect);
        bad
    }

    /// A capability a node-local ext4 volume honours, or a bad one.
    pub(super) fn cap(&mut self, sent: &mut Sent, spoil: bool) -> Option<csi::VolumeCapability> {
        let good = mount_cap("ext4");
        if !spoil {
            return Some(good);
        }
        let mount = |fs: &str, flags: &[&str], group: &str| {
            AccessType::Mount(MountVolume {
                fs_type: fs.to_owned(),
                mount_flags: flags.iter().map(|f| (*f).to_owned()).collect(),
                volume_mount_group: group.to_owned(),
            })
        };
        let (cap, field, what) = match self.rng.range(0, 7) {
            0 => (None, "volume_capability", "no capability"),
            1 => {
                let mut c = good;
                c.access_type = None;
                (Some(c), "access_type", "no access type")
            }
            2 => (
                Some(capability(mount("btrfs", &[], ""), Mode::SingleNodeWriter)),
                "fs_type",
                "fs_type btrfs",
            ),
            3 => {
                let mut c = good;
                c.access_mode = Some(csi::volume_capability::AccessMode { mode: 99 });
                (Some(c), "access_mode", "access mode 99")
            }
            4 => (
                Some(capability(
                    mount("ext4", &["rw,suid"], ""),
                    Mode::SingleNodeWriter,
                )),
                "mount_flags",
                "mount flag \"rw,suid\"",
            ),
            5 => (
                Some(capability(
                    mount("ext4", &["bind"], ""),
                    Mode::SingleNodeWriter,
                )),
                "mount_flags",
                "mount flag bind",
            ),
            6 => (
                Some(capability(
                    mount("ext4", &[], ""),
                    Mode::MultiNodeMultiWriter,
                )),
                "access_mode",
                "MULTI_NODE_MULTI_WRITER",
            ),
            _ => (
                Some(capability(
                    mount("ext4", &[], "1000"),
                    Mode::SingleNodeWriter,
                )),
                "volume_mount_group",
                "a volume_mount_group",
            ),
        };
        sent.spoil(what.to_owned(), Expect::Invalid(field));
        cap
    }

    /// CreateVolume parameters: a tier, or none; or a bad key or value.
    pub(super) fn params(&mut self, sent: &mut Sent, spoil: bool) -> HashMap<String, String> {
        let mut p = HashMap::new();
        if !spoil {
            match self.rng.range(0, 2) {
                0 => {}
                1 => drop(p.insert(TIER_KEY.to_owned(), "batch".to_owned())),
                _ => drop(p.insert(TIER_KEY.to_owned(), "gold".to_owned())),
            }
            return p;
        }
        let (k, v, field) = self.pick(&[
            ("color", "blue", "color"),
            (TIER_KEY, "no-such-tier", TIER_KEY),
            ("iolane.dev/read-iops", "lots", "iolane.dev/read-iops"),
            ("iolane.dev/bogus", "1", "iolane.dev/bogus"),
        ]);
        p.insert(k.to_owned(), v.to_owned());
        sent.spoil(format!("parameter {k}={v}"), Expect::Invalid(field));
        p
    }

    /// A size for the slot's next volume: 16 to 48 MiB.
    pub(super) fn size(&mut self) -> i64 {
        let mib = i64::try_from(self.rng.range(16, 48)).expect("small");
        round_up(mib << 20, size_unit())
    }

    /// A capacity range around `size`, or a bad one.
    pub(super) fn range(&mut self, sent: &mut Sent, size: i64, spoil: bool) -> csi::CapacityRange {
        if !spoil {
            return csi::CapacityRange {
                required_bytes: size,
                limit_bytes: 0,
            };
        }
        let (required_bytes, limit_bytes, expect, what) = self.pick(&[
            (
                -1,
                0,
                Expect::Invalid("required_bytes"),
                "required_bytes -1",
            ),
            (size, -1, Expect::Invalid("limit_bytes"), "limit_bytes -1"),
            (
                size,
                size / 2,
                Expect::Code(Code::OutOfRange),
                "limit below required",
            ),
        ]);
        sent.spoil(what.to_owned(), expect);
        csi::CapacityRange {
            required_bytes,
            limit_bytes,
        }
    }

    /// Sends one random request and records what it acknowledged.
    pub(super) async fn one(&mut self) {
        let sum: u64 = RPCS.iter().map(|(_, w)| w).sum();
        let mut at = self.rng.range(1, sum);
        let rpc = RPCS
            .iter()
            .find(|(_, w)| {
                if at <= *w {
                    true
                } else {
                    at -= w;
                    false
                }
            })
            .map_or("Probe", |(r, _)| *r);
        let spoil = self.one_in(4);
        let mut sent = Sent::well_formed(rpc);
        match rpc {
            "GetPluginInfo" | "GetPluginCapabilities" | "Probe" => self.identity(&sent).await,
            "CreateVolume"
            | "DeleteVolume"
            | "ValidateVolumeCapabilities"
            | "ControllerExpandVolume"
            | "ControllerGetVolume"
            | "ControllerModifyVolume" => {
                self.controller_volume(&mut sent, spoil).await;
            }
            "ControllerPublishVolume"
            | "ControllerUnpublishVolume"
            | "ListVolumes"
            | "GetCapacity"
            | "ControllerGetCapabilities"
            | "CreateSnapshot"
            | "DeleteSnapshot"
            | "ListSnapshots"
            | "GetSnapshot" => self.controller_other(&mut sent, spoil).await,
            _ => self.node(&mut sent, spoil).await,
        }
    }

    async fn identity(&mut self, sent: &Sent) {
        let ch = |c| IdentityClient::new(c);
        match sent.rpc {
            "GetPluginInfo" => {
                let r = self
                    .call(sent, |c| async move {
                        ch(c).get_plugin_info(csi::GetPluginInfoRequest {}).await
                    })
                    .await;
                if r.is_some_and(|r| r.name.is_empty() || r.vendor_version.is_empty()) {
                    self.shared
                        .violation("GetPluginInfo: no name or version".to_owned());
                }
            }
            "GetPluginCapabilities" => {
                let req = csi::GetPluginCapabilitiesRequest {};
                self.call(
                    sent,
                    |c| async move { ch(c).get_plugin_capabilities(req).await },
                )
                .await;
            }
            _ => {
                let r = self
                    .call(
                        sent,
                        |c| async move { ch(c).probe(csi::ProbeRequest {}).await },
                    )
                    .await;
                if r.is_some_and(|r| r.ready == Some(false)) {
                    self.shared.violation("Probe: not ready".to_owned());
                }
            }
        }
    }
}
