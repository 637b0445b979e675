//! Identity service and the advertised capabilities: GetPluginInfo, GetPluginCapabilities,
//! Probe, ControllerGetCapabilities, NodeGetCapabilities and NodeGetInfo.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn identity_reports_name_version_capabilities_and_ready() {
    require_root!();
    let mut d = Driver::start().await;
    let info = ok(
        d.identity
            .get_plugin_info(csi::GetPluginInfoRequest {})
            .await,
        "GetPluginInfo",
    );
    assert_eq!(info.name, iolane_tests::DRIVER_NAME);
    assert_eq!(info.vendor_version, env!("CARGO_PKG_VERSION"));

    let caps = ok(
        d.identity
            .get_plugin_capabilities(csi::GetPluginCapabilitiesRequest {})
            .await,
        "GetPluginCapabilities",
    );
    use csi::plugin_capability::Type as T;
    use csi::plugin_capability::service::Type as S;
    let services: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(T::Service(s)) => Some(s.r#type),
            _ => None,
        })
        .collect();
    assert!(
        services.contains(&(S::ControllerService as i32)),
        "CONTROLLER_SERVICE missing: {caps:?}"
    );
    assert!(
        services.contains(&(S::VolumeAccessibilityConstraints as i32)),
        "VOLUME_ACCESSIBILITY_CONSTRAINTS missing: {caps:?}"
    );

    let probe = ok(d.identity.probe(csi::ProbeRequest {}).await, "Probe");
    assert_eq!(probe.ready, Some(true));
}

#[tokio::test(flavor = "multi_thread")]
async fn controller_and_node_capabilities_and_node_info() {
    require_root!();
    let mut d = Driver::start().await;

    use csi::controller_service_capability::rpc::Type as C;
    let caps = ok(
        d.controller
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await,
        "ControllerGetCapabilities",
    );
    let got: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(csi::controller_service_capability::Type::Rpc(r)) => r.r#type,
            None => panic!("controller capability without type: {caps:?}"),
        })
        .collect();
    let mut want: BTreeSet<i32> = [
        C::CreateDeleteVolume,
        C::ListVolumes,
        C::GetCapacity,
        C::ExpandVolume,
        C::ModifyVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    // Snapshots and clones: the lvm backend only.
    if is_lvm() {
        want.extend([C::CreateDeleteSnapshot, C::ListSnapshots, C::CloneVolume].map(|t| t as i32));
    }
    assert_eq!(got, want, "controller capabilities");

    // What is not advertised must not be half-served.
    let unimpl = Code::Unimplemented;
    let r = d
        .controller
        .controller_publish_volume(csi::ControllerPublishVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerPublishVolume");
    let r = d
        .controller
        .controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerUnpublishVolume");
    let create = d
        .controller
        .create_snapshot(csi::CreateSnapshotRequest::default())
        .await;
    let delete = d
        .controller
        .delete_snapshot(csi::DeleteSnapshotRequest::default())
        .await;
    let list = d
        .controller
        .list_snapshots(csi::ListSnapshotsRequest::default())
        .await;
    if is_lvm() {
        // Served: empty requests are bad input naming the field.
        let s = expect_code(
            create,
            Code::InvalidArgument,
            "CreateSnapshot without a name",
        );
        assert!(s.message().contains("name"), "{:?}", s.message());
        let s = expect_code(
            delete,
            Code::InvalidArgument,
            "DeleteSnapshot without an ID",
        );
        assert!(s.message().contains("snapshot_id"), "{:?}", s.message());
        ok(list, "ListSnapshots");
    } else {
        expect_code(create, unimpl, "CreateSnapshot");
        expect_code(delete, unimpl, "DeleteSnapshot");
        expect_code(list, unimpl, "ListSnapshots");
    }
    let r = d
        .controller
        .controller_get_volume(csi::ControllerGetVolumeRequest::default())
        .await;
    expect_code(r, unimpl, "ControllerGetVolume");

    use csi::node_service_capability::rpc::Type as N;
    let caps = ok(
        d.node
            .node_get_capabilities(csi::NodeGetCapabilitiesRequest {})
            .await,
        "NodeGetCapabilities",
    );
    let got: BTreeSet<i32> = caps
        .capabilities
        .iter()
        .map(|c| match &c.r#type {
            Some(csi::node_service_capability::Type::Rpc(r)) => r.r#type,
            None => panic!("node capability without type: {caps:?}"),
        })
        .collect();
    let want: BTreeSet<i32> = [
        N::StageUnstageVolume,
        N::GetVolumeStats,
        N::VolumeCondition,
        N::ExpandVolume,
    ]
    .into_iter()
    .map(|t| t as i32)
    .collect();
    assert_eq!(got, want, "node capabilities");

    let info = ok(
        d.node.node_get_info(csi::NodeGetInfoRequest {}).await,
        "NodeGetInfo",
    );
    assert_eq!(info.node_id, NODE_ID);
    assert!(info.max_volumes_per_node >= 0);
    let topo = info
        .accessible_topology
        .expect("NodeGetInfo without accessible_topology");
    assert_eq!(
        topo.segments,
        HashMap::from([(TOPOLOGY_KEY.to_owned(), NODE_ID.to_owned())])
    );
}
