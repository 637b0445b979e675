//! `iolane controller`, the central Deployment's endpoint beside csi-resizer: it serves
//! Identity, ControllerExpandVolume (it always leaves the growing to the node) and
//! ControllerModifyVolume's input checks; with no Kubernetes API (as here) a valid
//! ControllerModifyVolume is UNAVAILABLE, never OK (tests/k8s/retier.sh runs it against
//! a real API server).

use iolane_tests::csi;
use iolane_tests::{Central, GIB, MIB, volume_id_for};

use csi::controller_client::ControllerClient;
use csi::identity_client::IdentityClient;
use tonic::Code;

fn expand(id: &str, required: i64, limit: i64) -> csi::ControllerExpandVolumeRequest {
    csi::ControllerExpandVolumeRequest {
        volume_id: id.to_owned(),
        capacity_range: Some(csi::CapacityRange {
            required_bytes: required,
            limit_bytes: limit,
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn central_controller_advertises_and_answers_expansion_and_checks_modification() {
    let central = Central::start().await;
    let mut identity = IdentityClient::new(central.channel.clone());
    let mut controller = ControllerClient::new(central.channel.clone());

    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await
        .expect("GetPluginInfo")
        .into_inner();
    assert_eq!(info.name, "csi.iolane.dev");

    let caps = controller
        .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
        .await
        .expect("ControllerGetCapabilities")
        .into_inner()
        .capabilities;
    let types: Vec<i32> = caps
        .iter()
        .filter_map(|c| match &c.r#type {
            Some(csi::controller_service_capability::Type::Rpc(r)) => Some(r.r#type),
            _ => None,
        })
        .collect();
    use csi::controller_service_capability::rpc::Type as C;
    assert_eq!(types, vec![C::ExpandVolume as i32, C::ModifyVolume as i32]);

    let id = volume_id_for("pvc-grow");
    let r = controller
        .controller_expand_volume(expand(&id, 2 * GIB + 1, 0))
        .await
        .expect("ControllerExpandVolume")
        .into_inner();
    assert!(r.node_expansion_required);
    assert_eq!(r.capacity_bytes, 2 * GIB + MIB);

    for (req, code, field) in [
        (expand("../etc", GIB, 0), Code::InvalidArgument, "volume_id"),
        (expand("", GIB, 0), Code::InvalidArgument, "volume_id"),
        (
            csi::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "capacity_range",
        ),
        (
            expand(&id, 2 * GIB, GIB),
            Code::OutOfRange,
            "capacity_range",
        ),
        (expand(&id, -1, 0), Code::InvalidArgument, "capacity_range"),
    ] {
        let e = controller
            .controller_expand_volume(req.clone())
            .await
            .expect_err("bad ControllerExpandVolume must fail");
        assert_eq!(e.code(), code, "{req:?}: {}", e.message());
        assert!(e.message().contains(field), "{req:?}: {}", e.message());
    }

    let modify = |id: &str, key: &str, value: &str| csi::ControllerModifyVolumeRequest {
        volume_id: id.to_owned(),
        mutable_parameters: [(key.to_owned(), value.to_owned())].into(),
        ..Default::default()
    };
    for (req, code, field) in [
        (
            modify("", "iolane.dev/tier", "batch"),
            Code::InvalidArgument,
            "volume_id",
        ),
        (
            modify(&id, "iolane.dev/tier", "gold"),
            Code::InvalidArgument,
            "iolane.dev/tier",
        ),
        (
            modify(&id, "XXX_FakeKey", "x"),
            Code::InvalidArgument,
            "XXX_FakeKey",
        ),
        (
            modify(&id, "iolane.dev/tier", "batch"),
            Code::Unavailable,
            "Kubernetes API",
        ),
    ] {
        let e = controller
            .controller_modify_volume(req.clone())
            .await
            .expect_err("ControllerModifyVolume without an API must not answer OK");
        assert_eq!(e.code(), code, "{req:?}: {}", e.message());
        assert!(e.message().contains(field), "{req:?}: {}", e.message());
    }

    let e = controller
        .create_volume(csi::CreateVolumeRequest {
            name: "pvc-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect_err("CreateVolume is the node's");
    assert_eq!(e.code(), Code::Unimplemented);
}
