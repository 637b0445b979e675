//! CreateVolume: sizes and topology, idempotency by name, a same name with another size,
//! bad arguments, name length and characters, another node's topology and capacity limits
//! (GetCapacity).

use super::*;

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_sizes_and_topology() {
    require_root!();
    let mut d = Driver::start().await;
    // Block sizes round up to whole MiB (loop) or whole 4 MiB extents (lvm).
    let unit = size_unit();
    // (name, capability, required, limit, expected size)
    let cases: [(&str, csi::VolumeCapability, i64, i64, i64); 7] = [
        // A filesystem volume is at least the ext4 minimum (16 MiB).
        ("tiny-mount", mount_cap(""), 1, 0, 16 * MIB),
        ("tiny-ext4", mount_cap("ext4"), 1, 0, 16 * MIB),
        // xfsprogs refuses data sections under 300 MiB.
        ("tiny-xfs", mount_cap("xfs"), 1, 0, 300 * MIB),
        // A block volume only rounds up to whole MiB.
        ("tiny-block", block_cap(), 1, 0, unit),
        (
            "odd-block",
            block_cap(),
            3 * MIB / 2,
            0,
            round_up(2 * MIB, unit),
        ),
        ("exact", mount_cap("ext4"), GIB, GIB, GIB),
        // No capacity range: the driver's default, 1 GiB.
        ("default", mount_cap(""), 0, 0, GIB),
    ];
    for (name, cap, required, limit, want) in cases {
        let r = d
            .controller
            .create_volume(create_request(name, vec![cap], required, limit))
            .await;
        let v = ok(
            r,
            &format!("CreateVolume {name} required={required} limit={limit}"),
        )
        .volume
        .expect("no volume");
        assert_eq!(
            v.capacity_bytes, want,
            "CreateVolume {name} required={required} limit={limit}: capacity"
        );
        assert!(
            topology_is_this_node(&v),
            "{name}: accessible_topology {:?}",
            v.accessible_topology
        );
    }

    let before = d.backend_state();
    // (name, capability, required, limit): no size the driver may pick fits.
    let impossible: [(&str, csi::VolumeCapability, i64, i64); 3] = [
        // No whole MiB lies in 1.5 MiB ..= 1.9 MiB.
        ("no-fit", block_cap(), 3 * MIB / 2, 19 * MIB / 10),
        // ext4 needs 16 MiB.
        ("below-ext4-min", mount_cap("ext4"), 1, 8 * MIB),
        ("inverted", block_cap(), 2 * MIB, MIB),
    ];
    for (name, cap, required, limit) in impossible {
        let r = d
            .controller
            .create_volume(create_request(name, vec![cap], required, limit))
            .await;
        expect_code(
            r,
            Code::OutOfRange,
            &format!("CreateVolume {name} required={required} limit={limit}"),
        );
    }
    assert_nothing_created(&d, &before, "after OUT_OF_RANGE creates").await;
    assert_eq!(images(&d).len(), 7, "one image per created volume");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_is_idempotent_by_name() {
    require_root!();
    let mut d = Driver::start().await;
    let req = create_request("twice", vec![mount_cap("ext4")], 64 * MIB, 64 * MIB);
    let first = ok(
        d.controller.create_volume(req.clone()).await,
        "CreateVolume #0",
    )
    .volume
    .expect("no volume");
    let state = d.backend_state();
    for i in 1..repeats() {
        let v = ok(
            d.controller.create_volume(req.clone()).await,
            &format!("CreateVolume #{i}"),
        )
        .volume
        .expect("no volume");
        assert_eq!(
            v.volume_id, first.volume_id,
            "CreateVolume #{i}: another id"
        );
        assert_eq!(
            v.capacity_bytes, first.capacity_bytes,
            "CreateVolume #{i}: capacity"
        );
    }
    assert_eq!(
        d.backend_state(),
        state,
        "repeated creates changed the state dir"
    );
    assert_eq!(images(&d).len(), 1, "exactly one image on disk");
    assert_eq!(list_ids(&mut d).await, vec![first.volume_id.clone()]);

    // Same name, range that still admits the existing size: the same volume.
    let r = d
        .controller
        .create_volume(create_request("twice", vec![mount_cap("ext4")], MIB, 0))
        .await;
    let v = ok(r, "CreateVolume with a smaller required_bytes")
        .volume
        .expect("no volume");
    assert_eq!(v.volume_id, first.volume_id);
    delete(&mut d, &first.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_same_name_other_size_is_already_exists() {
    require_root!();
    let mut d = Driver::start().await;
    let v = create(&mut d, "sized", &mount_cap(""), GIB).await;
    let state = d.backend_state();
    let r = d
        .controller
        .create_volume(create_request(
            "sized",
            vec![mount_cap("")],
            2 * GIB,
            2 * GIB,
        ))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "CreateVolume same name, 2 GiB instead of 1 GiB",
    );
    let r = d
        .controller
        .create_volume(create_request(
            "sized",
            vec![mount_cap("")],
            16 * MIB,
            512 * MIB,
        ))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "CreateVolume same name, limit below the existing size",
    );
    assert_eq!(
        d.backend_state(),
        state,
        "the refused creates changed the state dir"
    );
    assert_eq!(list_ids(&mut d).await, vec![v.volume_id.clone()]);
    let listed = ok(
        d.controller
            .list_volumes(csi::ListVolumesRequest::default())
            .await,
        "ListVolumes",
    );
    assert_eq!(
        listed.entries[0].volume.as_ref().map(|v| v.capacity_bytes),
        Some(GIB),
        "the existing volume must keep its size"
    );
    delete(&mut d, &v.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_rejects_bad_arguments_and_creates_nothing() {
    require_root!();
    let mut d = Driver::start().await;
    let state = d.backend_state();
    let good = || create_request("bad-args", vec![mount_cap("ext4")], 64 * MIB, 0);
    let mut cases: Vec<(&str, csi::CreateVolumeRequest, &str)> = Vec::new();

    let mut r = good();
    r.name = String::new();
    cases.push(("missing name", r, "name"));

    let mut r = good();
    r.volume_capabilities.clear();
    cases.push(("no capabilities", r, "volume_capabilities"));

    for mode in [
        Mode::MultiNodeMultiWriter,
        Mode::MultiNodeReaderOnly,
        Mode::MultiNodeSingleWriter,
    ] {
        let mut r = good();
        r.volume_capabilities = vec![with_mode(mount_cap("ext4"), mode)];
        cases.push((mode.as_str_name(), r, "access_mode"));
    }

    let mut r = good();
    r.volume_capabilities = vec![with_mode(mount_cap("ext4"), Mode::Unknown)];
    cases.push(("access mode UNKNOWN", r, "access_mode"));

    let mut r = good();
    r.volume_capabilities[0].access_mode = None;
    cases.push(("no access mode", r, "access_mode"));

    let mut r = good();
    r.volume_capabilities[0].access_type = None;
    cases.push(("no access type", r, "access_type"));

    let mut r = good();
    r.volume_capabilities = vec![mount_cap("ntfs")];
    cases.push(("unknown fs_type", r, "fs_type"));

    let mut r = good();
    r.volume_capabilities = vec![mount_cap("ext4"), mount_cap("xfs")];
    cases.push(("two filesystems", r, "volume_capabilities"));

    let mut r = good();
    r.volume_capabilities = vec![capability(
        AccessType::Mount(MountVolume {
            fs_type: "ext4".to_owned(),
            mount_flags: vec!["rw,exec".to_owned()],
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    )];
    cases.push(("two options smuggled in one mount flag", r, "mount_flags"));

    let mut r = good();
    r.parameters = HashMap::from([("fsTypo".to_owned(), "ext4".to_owned())]);
    cases.push(("unknown parameter key", r, "fsTypo"));

    let mut r = good();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: -1,
        limit_bytes: 0,
    });
    cases.push(("negative required_bytes", r, "required_bytes"));

    let mut r = good();
    r.capacity_range = Some(csi::CapacityRange {
        required_bytes: 0,
        limit_bytes: -5,
    });
    cases.push(("negative limit_bytes", r, "limit_bytes"));

    let mut r = good();
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Snapshot(
            csi::volume_content_source::SnapshotSource {
                snapshot_id: "snap-1".to_owned(),
            },
        )),
    });
    let unknown_snapshot = r.clone();
    if !is_lvm() {
        cases.push((
            "content source (the loop backend has no snapshots or clones)",
            r,
            "volume_content_source",
        ));
    }
    let mut r = good();
    r.volume_content_source = Some(csi::VolumeContentSource { r#type: None });
    cases.push(("content source naming nothing", r, "volume_content_source"));
    let mut r = good();
    r.volume_content_source = Some(csi::VolumeContentSource {
        r#type: Some(csi::volume_content_source::Type::Volume(
            csi::volume_content_source::VolumeSource {
                volume_id: "../x".to_owned(),
            },
        )),
    });
    cases.push((
        "content source with a malformed volume ID",
        r,
        "volume_content_source.volume.volume_id",
    ));

    for (what, req, field) in cases {
        let s = expect_code(
            d.controller.create_volume(req).await,
            Code::InvalidArgument,
            &format!("CreateVolume with {what}"),
        );
        assert!(
            s.message().contains(field),
            "CreateVolume with {what}: message {:?} does not name {field:?}",
            s.message()
        );
    }
    if is_lvm() {
        // Well formed, but no such snapshot on this node.
        let s = expect_code(
            d.controller.create_volume(unknown_snapshot).await,
            Code::NotFound,
            "CreateVolume from a snapshot that does not exist",
        );
        assert!(s.message().contains("snap-1"), "{:?}", s.message());
    }
    assert_nothing_created(&d, &state, "after invalid CreateVolume calls").await;
    assert!(list_ids(&mut d).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_name_length_and_characters() {
    require_root!();
    let mut d = Driver::start().await;
    let name128: String = "n-"
        .chars()
        .chain((0..126).map(|i| char::from(b'a' + (i % 26) as u8)))
        .collect();
    assert_eq!(name128.len(), 128);
    let v = create(&mut d, &name128, &mount_cap(""), 16 * MIB).await;
    let state = d.backend_state();

    let name129 = format!("{name128}x");
    let s = expect_code(
        d.controller
            .create_volume(create_request(&name129, vec![mount_cap("")], 16 * MIB, 0))
            .await,
        Code::InvalidArgument,
        "CreateVolume with a 129-character name",
    );
    assert!(
        s.message().contains("name"),
        "message {:?} does not name the field",
        s.message()
    );
    let huge = "x".repeat(10 * 1024);
    let s = expect_code(
        d.controller
            .create_volume(create_request(&huge, vec![mount_cap("")], 16 * MIB, 0))
            .await,
        Code::InvalidArgument,
        "CreateVolume with a 10 KiB name",
    );
    assert!(
        s.message().contains("name"),
        "message {:?} does not name the field",
        s.message()
    );
    assert_nothing_created(&d, &state, "after over-long names").await;

    // A name is only ever hashed: path syntax in it must not reach the filesystem.
    let odd = create(&mut d, "../../escape/x", &block_cap(), size_unit()).await;
    assert!(
        !d.root().join("escape").exists(),
        "a volume name became a path"
    );
    for f in files_under(d.root()) {
        let inside = f.starts_with(d.state_dir())
            || f.starts_with(d.root().join("sock"))
            || f.file_name()
                .is_some_and(|n| n == "driver.log" || n == "config.toml");
        assert!(inside, "unexpected file {}", f.display());
    }
    delete(&mut d, &odd.volume_id).await;
    delete(&mut d, &v.volume_id).await;
    assert!(d.backend_state().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_topology_of_another_node_is_resource_exhausted() {
    require_root!();
    let mut d = Driver::start().await;
    let state = d.backend_state();
    let topo = |k: &str, v: &str| csi::Topology {
        segments: HashMap::from([(k.to_owned(), v.to_owned())]),
    };
    for (what, requisite) in [
        ("another node", vec![topo(TOPOLOGY_KEY, "other-node")]),
        ("an unknown topology key", vec![topo("zone", "a")]),
    ] {
        let mut req = create_request("elsewhere", vec![mount_cap("")], 64 * MIB, 0);
        req.accessibility_requirements = Some(csi::TopologyRequirement {
            requisite,
            preferred: Vec::new(),
        });
        expect_code(
            d.controller.create_volume(req).await,
            Code::ResourceExhausted,
            &format!("CreateVolume with requisite topology of {what}"),
        );
    }
    assert_nothing_created(&d, &state, "after unreachable-topology creates").await;

    // This node among several requisite segments: created here.
    let mut req = create_request("here", vec![mount_cap("")], 64 * MIB, 0);
    req.accessibility_requirements = Some(csi::TopologyRequirement {
        requisite: vec![
            topo(TOPOLOGY_KEY, "other-node"),
            topo(TOPOLOGY_KEY, NODE_ID),
        ],
        preferred: vec![topo(TOPOLOGY_KEY, NODE_ID)],
    });
    let v = ok(
        d.controller.create_volume(req).await,
        "CreateVolume requisite incl. this node",
    )
    .volume
    .expect("no volume");
    assert!(
        topology_is_this_node(&v),
        "accessible_topology {:?}",
        v.accessible_topology
    );
    delete(&mut d, &v.volume_id).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn create_volume_beyond_capacity_is_resource_exhausted() {
    require_root!();
    // Ratio 1: capacity tracks the real free space, so a 1 GiB volume moves it by far
    // more than parallel tests writing a few MiB do.
    let mut d = Driver::start_with(Options {
        config: Some("[loop]\noverprovision_ratio = 1.0\n".to_owned()),
        ..Options::default()
    })
    .await;
    let state = d.backend_state();
    let before = capacity(&mut d, csi::GetCapacityRequest::default()).await;
    assert!(
        before > GIB,
        "GetCapacity {before} is too small to run this test"
    );

    let too_big = before + GIB;
    let r = d
        .controller
        .create_volume(create_request("huge", vec![block_cap()], too_big, too_big))
        .await;
    expect_code(
        r,
        Code::ResourceExhausted,
        &format!("CreateVolume of {too_big} bytes with {before} available"),
    );
    assert_nothing_created(&d, &state, "after an over-capacity create").await;

    let v = create(&mut d, "one-gib", &block_cap(), GIB).await;
    let after = capacity(&mut d, csi::GetCapacityRequest::default()).await;
    assert!(
        after < before,
        "GetCapacity did not decrease after a 1 GiB create: {before} -> {after}"
    );

    let here = capacity(
        &mut d,
        csi::GetCapacityRequest {
            accessible_topology: Some(csi::Topology {
                segments: node_topology(),
            }),
            ..Default::default()
        },
    )
    .await;
    assert!(here > 0, "GetCapacity for this node's topology is {here}");
    let elsewhere = capacity(
        &mut d,
        csi::GetCapacityRequest {
            accessible_topology: Some(csi::Topology {
                segments: HashMap::from([(TOPOLOGY_KEY.to_owned(), "other-node".to_owned())]),
            }),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(elsewhere, 0, "GetCapacity for another node's topology");
    delete(&mut d, &v.volume_id).await;
}

/// GetCapacity and ValidateVolumeCapabilities refuse the parameters CreateVolume refuses,
/// naming the key: found by the gRPC fuzz campaign (`campaign::fuzz`), which saw an
/// unknown tier and a malformed cap answered with the node's capacity (so a StorageClass
/// no volume can be made from was reported as having room) and confirmed as valid.
#[tokio::test(flavor = "multi_thread")]
async fn capacity_and_validation_refuse_bad_tier_parameters() {
    require_root!();
    let mut d = Driver::start().await;
    for (key, value) in [
        ("iolane.dev/tier", "no-such-tier"),
        ("iolane.dev/read-iops", "lots"),
        ("iolane.dev/allowed-tiers", "batch,no-such-tier"),
    ] {
        let r = d
            .controller
            .get_capacity(csi::GetCapacityRequest {
                parameters: HashMap::from([(key.to_owned(), value.to_owned())]),
                ..Default::default()
            })
            .await;
        let s = expect_code(
            r,
            Code::InvalidArgument,
            &format!("GetCapacity with {key}={value}"),
        );
        assert!(
            s.message().contains(key),
            "GetCapacity with {key}={value}: the message does not name the key: {}",
            s.message()
        );
    }
    // A good class, as csi-provisioner passes it (with the CO's reserved keys), has room.
    let room = capacity(
        &mut d,
        csi::GetCapacityRequest {
            parameters: HashMap::from([
                ("iolane.dev/tier".to_owned(), "streaming".to_owned()),
                ("csi.storage.k8s.io/fstype".to_owned(), "ext4".to_owned()),
            ]),
            ..Default::default()
        },
    )
    .await;
    assert!(room > 0, "GetCapacity of a good class is {room}");

    // ValidateVolumeCapabilities does not confirm such a class either.
    let v = create(&mut d, "validate-class", &block_cap(), 64 * MIB).await;
    let r = d
        .controller
        .validate_volume_capabilities(csi::ValidateVolumeCapabilitiesRequest {
            volume_id: v.volume_id.clone(),
            volume_capabilities: vec![block_cap()],
            parameters: HashMap::from([("iolane.dev/tier".to_owned(), "no-such-tier".to_owned())]),
            ..Default::default()
        })
        .await;
    let r = ok(r, "ValidateVolumeCapabilities with an unknown tier");
    assert!(
        r.confirmed.is_none() && r.message.contains("iolane.dev/tier"),
        "ValidateVolumeCapabilities with an unknown tier: confirmed {:?}, message {:?}",
        r.confirmed,
        r.message
    );
    delete(&mut d, &v.volume_id).await;
}
