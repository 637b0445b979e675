//! The rest of the Controller service's volume calls: DeleteVolume (idempotency, path
//! traversal), ValidateVolumeCapabilities, ListVolumes (paging and tokens) and
//! ControllerModifyVolume on the node's own socket.

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn delete_volume_is_idempotent_and_refuses_traversal() {
    require_root!();
    let mut d = Driver::start().await;
    for id in [
        "fake-vol-id",
        UNKNOWN_ID,
        "iol-00000000000000000000000000000000",
    ] {
        delete(&mut d, id).await;
    }
    // Decoys where a traversing ID would land (`<state>/loop/../../etc.img`).
    for f in ["etc.img", "etc.json", "etc"] {
        std::fs::write(d.root().join(f), b"decoy").expect("write decoy");
    }
    let long = "a".repeat(10 * 1024);
    for id in [
        "",
        "../../etc",
        "a/b",
        "..",
        ".",
        "/etc/passwd",
        "a\u{0}b",
        long.as_str(),
    ] {
        let r = d
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: id.to_owned(),
                ..Default::default()
            })
            .await;
        let shown: String = id.chars().take(40).collect();
        expect_code(
            r,
            Code::InvalidArgument,
            &format!("DeleteVolume {shown:?} ({} bytes)", id.len()),
        );
    }
    for f in ["etc.img", "etc.json", "etc"] {
        assert!(
            d.root().join(f).exists(),
            "DeleteVolume removed {f} outside the state dir"
        );
    }

    let v = create(&mut d, "doomed", &mount_cap(""), 64 * MIB).await;
    for i in 0..repeats() {
        let r = d
            .controller
            .delete_volume(csi::DeleteVolumeRequest {
                volume_id: v.volume_id.clone(),
                ..Default::default()
            })
            .await;
        ok(r, &format!("DeleteVolume #{i}"));
    }
    assert!(
        d.backend_state().is_empty(),
        "files left: {:?}",
        d.backend_state()
    );
    assert!(list_ids(&mut d).await.is_empty());
    d.assert_no_leaks("after delete").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_volume_capabilities() {
    require_root!();
    let mut d = Driver::start().await;
    let req = |id: &str, caps: Vec<csi::VolumeCapability>| csi::ValidateVolumeCapabilitiesRequest {
        volume_id: id.to_owned(),
        volume_capabilities: caps,
        ..Default::default()
    };
    let r = d
        .controller
        .validate_volume_capabilities(req(UNKNOWN_ID, vec![mount_cap("")]))
        .await;
    expect_code(
        r,
        Code::NotFound,
        "ValidateVolumeCapabilities of an unknown volume",
    );
    let r = d
        .controller
        .validate_volume_capabilities(req("", vec![mount_cap("")]))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ValidateVolumeCapabilities without volume_id",
    );

    let v = create(&mut d, "validate", &mount_cap(""), 64 * MIB).await;
    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, Vec::new()))
        .await;
    expect_code(
        r,
        Code::InvalidArgument,
        "ValidateVolumeCapabilities without capabilities",
    );

    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, vec![mount_cap("")]))
        .await;
    let resp = ok(r, "ValidateVolumeCapabilities SINGLE_NODE_WRITER mount");
    let confirmed = resp
        .confirmed
        .unwrap_or_else(|| panic!("SINGLE_NODE_WRITER mount not confirmed: {:?}", resp.message));
    assert_eq!(confirmed.volume_capabilities, vec![mount_cap("")]);

    let mnmw = with_mode(mount_cap(""), Mode::MultiNodeMultiWriter);
    let r = d
        .controller
        .validate_volume_capabilities(req(&v.volume_id, vec![mnmw]))
        .await;
    let resp = ok(r, "ValidateVolumeCapabilities MULTI_NODE_MULTI_WRITER");
    assert!(
        resp.confirmed.is_none(),
        "MULTI_NODE_MULTI_WRITER confirmed: {resp:?}"
    );
    assert!(
        !resp.message.is_empty(),
        "not confirmed, but no message says why"
    );
    delete(&mut d, &v.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_volumes_paging_and_tokens() {
    require_root!();
    let mut d = Driver::start().await;
    let mut all = BTreeSet::new();
    for i in 0..5 {
        all.insert(
            create(&mut d, &format!("list-{i}"), &block_cap(), size_unit())
                .await
                .volume_id,
        );
    }
    let full = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert!(
        full.next_token.is_empty(),
        "a list without max_entries must be one page"
    );
    for e in &full.entries {
        let v = e.volume.as_ref().expect("entry without volume");
        assert_eq!(v.capacity_bytes, size_unit());
        assert!(
            topology_is_this_node(v),
            "accessible_topology {:?}",
            v.accessible_topology
        );
    }
    let ids: BTreeSet<String> = full
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(ids, all);
    assert_eq!(full.entries.len(), 5, "duplicates in ListVolumes");

    // Paging with max_entries = 2 returns every volume exactly once.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = d
            .controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: token.clone(),
            })
            .await;
        let page = ok(r, &format!("ListVolumes page {pages}"));
        pages += 1;
        assert!(
            page.entries.len() <= 2,
            "page of {} with max_entries 2",
            page.entries.len()
        );
        seen.extend(
            page.entries
                .iter()
                .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone())),
        );
        assert!(pages <= 5, "paging does not end");
        if page.next_token.is_empty() {
            break;
        }
        token = page.next_token;
    }
    assert_eq!(seen.len(), 5, "paged ids {seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), all);

    // Deleting the last volume of a page keeps its token valid.
    let first = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 2,
                starting_token: String::new(),
            })
            .await,
        "ListVolumes first page",
    );
    let first_ids: Vec<String> = first
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    assert_eq!(first_ids.len(), 2);
    assert!(!first.next_token.is_empty());
    delete(&mut d, &first_ids[1]).await;
    let rest = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest {
                max_entries: 0,
                starting_token: first.next_token.clone(),
            })
            .await,
        "ListVolumes with the token of a page whose last volume was deleted",
    );
    let rest_ids: Vec<String> = rest
        .entries
        .iter()
        .filter_map(|e| e.volume.as_ref().map(|v| v.volume_id.clone()))
        .collect();
    let unique: BTreeSet<&String> = rest_ids.iter().collect();
    assert_eq!(
        unique.len(),
        rest_ids.len(),
        "duplicates after the token: {rest_ids:?}"
    );
    for id in &rest_ids {
        assert!(
            !first_ids.contains(id),
            "{id} was on the first page already (or deleted)"
        );
    }
    assert_eq!(
        rest_ids.len(),
        3,
        "the volumes after the first page: {rest_ids:?}"
    );

    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: 0,
            starting_token: "invalid-token".to_owned(),
        })
        .await;
    expect_code(
        r,
        Code::Aborted,
        "ListVolumes starting_token \"invalid-token\"",
    );
    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest {
            max_entries: -1,
            starting_token: String::new(),
        })
        .await;
    expect_code(r, Code::InvalidArgument, "ListVolumes max_entries -1");

    for id in list_ids(&mut d).await {
        delete(&mut d, &id).await;
    }
    assert!(d.backend_state().is_empty());
}

/// The tier ListVolumes reports for `id` (its stored tier, in `volume_context`).
async fn listed_tier(d: &mut Driver, id: &str) -> Option<String> {
    let r = d
        .controller
        .list_volumes(csi::ListVolumesRequest::default())
        .await;
    ok(r, "ListVolumes")
        .entries
        .into_iter()
        .filter_map(|e| e.volume)
        .find(|v| v.volume_id == id)
        .and_then(|v| v.volume_context.get("iolane.dev/tier").cloned())
}

#[tokio::test(flavor = "multi_thread")]
async fn modify_volume_checks_its_input_then_re_tiers_the_volume() {
    require_root!();
    let mut d = Driver::start().await;
    let modify = |id: &str, pairs: &[(&str, &str)]| csi::ControllerModifyVolumeRequest {
        volume_id: id.to_owned(),
        mutable_parameters: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let v = create(&mut d, "retier", &mount_cap(""), 64 * MIB).await;
    assert_eq!(
        listed_tier(&mut d, &v.volume_id).await.as_deref(),
        Some("batch")
    );

    for (req, code, field) in [
        (modify("", &[]), Code::InvalidArgument, "volume_id"),
        (modify("../x", &[]), Code::InvalidArgument, "volume_id"),
        (modify(UNKNOWN_ID, &[]), Code::NotFound, UNKNOWN_ID),
        (
            modify(&v.volume_id, &[("XXX_FakeKey", "x")]),
            Code::InvalidArgument,
            "XXX_FakeKey",
        ),
        (
            modify(&v.volume_id, &[("iolane.dev/tier", "gold")]),
            Code::InvalidArgument,
            "iolane.dev/tier",
        ),
        (
            modify(&v.volume_id, &[("iolane.dev/read-iops", "-1")]),
            Code::InvalidArgument,
            "iolane.dev/read-iops",
        ),
        // Not a mutable parameter: the priority follows the tier.
        (
            modify(&v.volume_id, &[("iolane.dev/priority", "streaming")]),
            Code::InvalidArgument,
            "iolane.dev/priority",
        ),
    ] {
        let r = d.controller.controller_modify_volume(req.clone()).await;
        let s = expect_code(r, code, &format!("ControllerModifyVolume {req:?}"));
        assert!(s.message().contains(field), "{req:?}: {}", s.message());
    }
    // Nothing changed by the refused requests.
    assert_eq!(
        listed_tier(&mut d, &v.volume_id).await.as_deref(),
        Some("batch")
    );

    // No parameters: nothing to change. A tier: stored, and the same again is a no-op.
    ok(
        d.controller
            .controller_modify_volume(modify(&v.volume_id, &[]))
            .await,
        "ControllerModifyVolume without parameters",
    );
    for i in 0..2 {
        ok(
            d.controller
                .controller_modify_volume(modify(&v.volume_id, &[("iolane.dev/tier", "streaming")]))
                .await,
            &format!("ControllerModifyVolume streaming #{i}"),
        );
        assert_eq!(
            listed_tier(&mut d, &v.volume_id).await.as_deref(),
            Some("streaming")
        );
    }
    // The stored tier survives a restart.
    d.restart().await;
    assert_eq!(
        listed_tier(&mut d, &v.volume_id).await.as_deref(),
        Some("streaming")
    );
    delete(&mut d, &v.volume_id).await;
}
