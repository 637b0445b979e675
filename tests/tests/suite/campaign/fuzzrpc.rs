//! The gRPC fuzz campaign's Controller and Node calls: each request built for the client's
//! slot ([`super::fuzzreq`] spoils one field where asked) and what the node acknowledged
//! recorded in the campaign model.

use iolane_tests::csi;
use iolane_tests::{CAP_SYS_RESOURCE, has_capability, node_topology};
use tonic::Code;

use csi::controller_client::ControllerClient;
use csi::node_client::NodeClient;

use super::TIER_KEY;
use super::fuzz::Client;
use super::fuzzreq::{Expect, Sent};

/// CreateVolume names that are not names.
const BAD_NAMES: [&str; 3] = ["", "a\u{7}bell", "x"];

impl Client {
    /// The Controller calls on the slot's volume.
    pub(super) async fn controller_volume(&mut self, sent: &mut Sent, spoil: bool) {
        let ch = ControllerClient::new;
        // Which field a spoilt request spoils.
        let which = self.rng.range(0, 3);
        match sent.rpc {
            "CreateVolume" => {
                let held = self.vol();
                let size = match &held {
                    Some(v) if self.one_in(2) => v.size,
                    _ => self.size(),
                };
                let mut name = self.name();
                if spoil && which == 0 {
                    name = match self.pick(&BAD_NAMES) {
                        "x" => "x".repeat(200),
                        n => n.to_owned(),
                    };
                    sent.spoil(format!("name {name:?}"), Expect::Invalid("name"));
                }
                let cap = self.cap(sent, spoil && which == 1);
                let caps = match cap {
                    Some(c) => vec![c],
                    None => {
                        sent.spoil(
                            "no capabilities".to_owned(),
                            Expect::Invalid("volume_capabilities"),
                        );
                        Vec::new()
                    }
                };
                let parameters = self.params(sent, spoil && which == 2);
                let capacity_range = Some(self.range(sent, size, spoil && which == 3));
                let req = csi::CreateVolumeRequest {
                    name,
                    capacity_range,
                    volume_capabilities: caps,
                    parameters,
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move { ch(c).create_volume(req).await })
                    .await;
                if let Some(v) = r.and_then(|r| r.volume) {
                    self.created(&v);
                }
            }
            "DeleteVolume" => {
                let volume_id = self.vol_id(sent, spoil);
                let req = csi::DeleteVolumeRequest {
                    volume_id,
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move { ch(c).delete_volume(req).await })
                    .await;
                if r.is_some() {
                    self.deleted();
                }
            }
            "ValidateVolumeCapabilities" => {
                let volume_id = self.vol_id(sent, spoil && which == 0);
                // A capability or parameter the node cannot honour is answered OK, not
                // confirmed, with the reason naming the field.
                let mut unconfirmed = Sent::well_formed("ValidateVolumeCapabilities");
                let cap = self.cap(&mut unconfirmed, spoil && which == 1);
                let parameters = self.params(&mut unconfirmed, spoil && which == 2);
                let caps = match cap {
                    Some(c) => vec![c],
                    None => {
                        sent.spoil(
                            "no capabilities".to_owned(),
                            Expect::Invalid("volume_capabilities"),
                        );
                        Vec::new()
                    }
                };
                let req = csi::ValidateVolumeCapabilitiesRequest {
                    volume_id,
                    volume_capabilities: caps,
                    parameters,
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move {
                        ch(c).validate_volume_capabilities(req).await
                    })
                    .await;
                if let (Some(r), Expect::Invalid(field)) = (r, unconfirmed.expect)
                    && (r.confirmed.is_some() || !r.message.contains(field))
                {
                    self.shared.violation(format!(
                        "client {} {}: confirmed {:?}, message {:?}, expected not confirmed naming {field:?}",
                        self.k,
                        unconfirmed.describe(),
                        r.confirmed.is_some(),
                        r.message
                    ));
                }
            }
            "ControllerExpandVolume" => {
                let volume_id = self.vol_id(sent, spoil && which == 0);
                let size = self.vol().map_or(16 << 20, |v| v.size) + self.size() / 2;
                let capacity_range = Some(self.range(sent, size, spoil && which != 0));
                let req = csi::ControllerExpandVolumeRequest {
                    volume_id,
                    capacity_range,
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move {
                        ch(c).controller_expand_volume(req).await
                    })
                    .await;
                if let Some(r) = r {
                    self.set(|s| {
                        if let Some(v) = s {
                            v.size = r.capacity_bytes;
                        }
                    });
                }
            }
            "ControllerGetVolume" => {
                // Not advertised (no GET_VOLUME capability).
                sent.expect = Expect::Code(Code::Unimplemented);
                let req = csi::ControllerGetVolumeRequest {
                    volume_id: self.id(),
                };
                self.call(
                    sent,
                    |c| async move { ch(c).controller_get_volume(req).await },
                )
                .await;
            }
            _ => {
                let volume_id = self.vol_id(sent, spoil && which == 0);
                let tier = self.pick(&["batch", "gold"]);
                let mut mutable_parameters =
                    std::collections::HashMap::from([(TIER_KEY.to_owned(), tier.to_owned())]);
                if spoil && which != 0 {
                    let (k, v) = self.pick(&[("color", "blue"), (TIER_KEY, "no-such-tier")]);
                    mutable_parameters.insert(k.to_owned(), v.to_owned());
                    sent.spoil(format!("mutable parameter {k}={v}"), Expect::Invalid(k));
                }
                let req = csi::ControllerModifyVolumeRequest {
                    volume_id,
                    mutable_parameters,
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move {
                        ch(c).controller_modify_volume(req).await
                    })
                    .await;
                if r.is_some() {
                    self.set(|s| {
                        if let Some(v) = s {
                            v.tier = Some(tier);
                        }
                    });
                }
            }
        }
    }

    /// The other Controller calls: listing, capacity, capabilities, and the calls the
    /// loop backend does not serve (UNIMPLEMENTED whatever the request holds).
    pub(super) async fn controller_other(&mut self, sent: &mut Sent, spoil: bool) {
        let ch = ControllerClient::new;
        let unimplemented = Expect::Code(Code::Unimplemented);
        match sent.rpc {
            "ListVolumes" => {
                let max_entries = i32::try_from(self.rng.range(0, 4)).expect("small");
                let mut req = csi::ListVolumesRequest {
                    max_entries,
                    ..Default::default()
                };
                if spoil {
                    if self.one_in(2) {
                        req.max_entries = -1;
                        sent.spoil("max_entries -1".to_owned(), Expect::Invalid("max_entries"));
                    } else {
                        req.starting_token = "no-such-token".to_owned();
                        sent.spoil(
                            "a token never issued".to_owned(),
                            Expect::Code(Code::Aborted),
                        );
                    }
                }
                self.call(sent, |c| async move { ch(c).list_volumes(req).await })
                    .await;
            }
            "GetCapacity" => {
                let parameters = self.params(sent, spoil);
                let req = csi::GetCapacityRequest {
                    parameters,
                    accessible_topology: self.one_in(2).then(|| csi::Topology {
                        segments: node_topology(),
                    }),
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).get_capacity(req).await })
                    .await;
            }
            "ControllerGetCapabilities" => {
                let req = csi::ControllerGetCapabilitiesRequest {};
                self.call(sent, |c| async move {
                    ch(c).controller_get_capabilities(req).await
                })
                .await;
            }
            "ControllerPublishVolume" => {
                sent.expect = unimplemented;
                let req = csi::ControllerPublishVolumeRequest {
                    volume_id: self.id(),
                    node_id: "node".to_owned(),
                    ..Default::default()
                };
                self.call(sent, |c| async move {
                    ch(c).controller_publish_volume(req).await
                })
                .await;
            }
            "ControllerUnpublishVolume" => {
                sent.expect = unimplemented;
                let req = csi::ControllerUnpublishVolumeRequest {
                    volume_id: self.id(),
                    ..Default::default()
                };
                self.call(sent, |c| async move {
                    ch(c).controller_unpublish_volume(req).await
                })
                .await;
            }
            "CreateSnapshot" => {
                sent.expect = unimplemented;
                let req = csi::CreateSnapshotRequest {
                    source_volume_id: self.id(),
                    name: format!("snap-{}", self.name()),
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).create_snapshot(req).await })
                    .await;
            }
            "DeleteSnapshot" => {
                sent.expect = unimplemented;
                let req = csi::DeleteSnapshotRequest {
                    snapshot_id: format!("iolsnap-{}", self.k),
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).delete_snapshot(req).await })
                    .await;
            }
            "ListSnapshots" => {
                sent.expect = unimplemented;
                let req = csi::ListSnapshotsRequest {
                    source_volume_id: self.id(),
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).list_snapshots(req).await })
                    .await;
            }
            _ => {
                sent.expect = unimplemented;
                let req = csi::GetSnapshotRequest {
                    snapshot_id: format!("iolsnap-{}", self.k),
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).get_snapshot(req).await })
                    .await;
            }
        }
    }
}

impl Client {
    /// The Node calls on the slot's volume, at its kubelet-shaped staging and target
    /// paths.
    pub(super) async fn node(&mut self, sent: &mut Sent, spoil: bool) {
        let ch = NodeClient::new;
        let spoil = spoil && !matches!(sent.rpc, "NodeGetCapabilities" | "NodeGetInfo");
        let which = self.rng.range(0, 2);
        let id = self.vol_id(sent, spoil && which == 0);
        let mut staging = self.staging();
        let mut target = self.target();
        match sent.rpc {
            "NodeStageVolume" => {
                if spoil && which == 1 {
                    staging = self.bad_path(sent, "staging_target_path", &staging);
                }
                let volume_capability = self.cap(sent, spoil && which == 2);
                let req = csi::NodeStageVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                    volume_capability,
                    volume_context: self.publish_context(),
                    ..Default::default()
                };
                let r = self
                    .call(sent, |c| async move { ch(c).node_stage_volume(req).await })
                    .await;
                if r.is_some() {
                    self.set(|s| s.as_mut().map_or((), |v| v.staged = true));
                }
            }
            "NodeUnstageVolume" => {
                if spoil && which != 0 {
                    staging = self.bad_path(sent, "staging_target_path", &staging);
                }
                let req = csi::NodeUnstageVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                };
                let r = self
                    .call(
                        sent,
                        |c| async move { ch(c).node_unstage_volume(req).await },
                    )
                    .await;
                if r.is_some() {
                    self.set(|s| s.as_mut().map_or((), |v| v.staged = false));
                }
            }
            "NodePublishVolume" => {
                let mut volume_context = self.publish_context();
                let volume_capability = match which {
                    1 if spoil => {
                        if self.one_in(2) {
                            target = self.bad_path(sent, "target_path", &target);
                        } else {
                            volume_context
                                .insert(super::POD_UID_KEY.to_owned(), "not-a-uid".to_owned());
                            sent.spoil("a bad pod UID".to_owned(), Expect::Invalid("pod.uid"));
                        }
                        self.cap(sent, false)
                    }
                    _ => self.cap(sent, spoil && which == 2),
                };
                let req = csi::NodePublishVolumeRequest {
                    volume_id: id,
                    staging_target_path: staging,
                    target_path: target,
                    volume_capability,
                    readonly: self.one_in(5),
                    volume_context,
                    ..Default::default()
                };
                let r = self
                    .call(
                        sent,
                        |c| async move { ch(c).node_publish_volume(req).await },
                    )
                    .await;
                if r.is_some() {
                    self.set(|s| s.as_mut().map_or((), |v| v.published = true));
                }
            }
            "NodeUnpublishVolume" => {
                if spoil && which != 0 {
                    target = self.bad_path(sent, "target_path", &target);
                }
                let req = csi::NodeUnpublishVolumeRequest {
                    volume_id: id,
                    target_path: target,
                };
                let r = self
                    .call(
                        sent,
                        |c| async move { ch(c).node_unpublish_volume(req).await },
                    )
                    .await;
                if r.is_some() {
                    self.set(|s| s.as_mut().map_or((), |v| v.published = false));
                }
            }
            "NodeGetVolumeStats" => {
                let mut volume_path = if self.one_in(2) { target } else { staging };
                if spoil && which != 0 {
                    volume_path = self.bad_path(sent, "volume_path", &volume_path);
                }
                let req = csi::NodeGetVolumeStatsRequest {
                    volume_id: id,
                    volume_path,
                    ..Default::default()
                };
                self.call(
                    sent,
                    |c| async move { ch(c).node_get_volume_stats(req).await },
                )
                .await;
            }
            "NodeExpandVolume" => {
                let mut volume_path = if self.one_in(2) { target } else { staging };
                if spoil && which == 1 {
                    volume_path = self.bad_path(sent, "volume_path", &volume_path);
                }
                let size = self.vol().map_or(16 << 20, |v| v.size);
                let capacity_range = Some(self.range(sent, size, spoil && which == 2));
                if !has_capability(CAP_SYS_RESOURCE) {
                    sent.host_refusal = Some("resize2fs");
                }
                let req = csi::NodeExpandVolumeRequest {
                    volume_id: id,
                    volume_path,
                    capacity_range,
                    ..Default::default()
                };
                self.call(sent, |c| async move { ch(c).node_expand_volume(req).await })
                    .await;
            }
            "NodeGetCapabilities" => {
                let req = csi::NodeGetCapabilitiesRequest {};
                self.call(
                    sent,
                    |c| async move { ch(c).node_get_capabilities(req).await },
                )
                .await;
            }
            _ => {
                let req = csi::NodeGetInfoRequest {};
                let r = self
                    .call(sent, |c| async move { ch(c).node_get_info(req).await })
                    .await;
                if r.is_some_and(|r| r.node_id.is_empty()) {
                    self.shared.violation("NodeGetInfo: no node ID".to_owned());
                }
            }
        }
    }
}
