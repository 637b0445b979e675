//! Mount flags (kubelet's SELinux label among them) reaching the staging mount, and
//! read-only publishes (filesystem and raw block) refusing writes.

use super::*;

fn assert_write_refused(path: &Path, allowed: &[i32], what: &str) {
    let res = write_synced(path, b"must not land");
    match res {
        Ok(()) => panic!("{what}: writing {} succeeded", path.display()),
        Err(e) => assert!(
            e.raw_os_error().is_some_and(|c| allowed.contains(&c)),
            "{what}: writing {} failed with {e}, expected one of errno {allowed:?}",
            path.display()
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mount_flags_reach_the_staging_mount() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = capability(
        AccessType::Mount(MountVolume {
            fs_type: "ext4".to_owned(),
            mount_flags: vec!["noatime".to_owned(), "nodev".to_owned()],
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    );
    let v = create(&mut d, "flags", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("flags");
    let target = d.target("flags");
    stage(&mut d, &id, &staging, &cap).await;
    let m = mount_at(&staging).expect("staging path is not mounted");
    for flag in ["noatime", "nodev"] {
        assert!(
            m.options.split(',').any(|o| o == flag),
            "staging mount options {:?} lack {flag}",
            m.options
        );
    }
    publish(&mut d, &id, &staging, &target, &cap, false).await;
    let t = mount_at(&target).expect("target is not mounted");
    assert!(
        t.options.split(',').any(|o| o == "noatime"),
        "the bind of a noatime staging mount lost noatime: {:?}",
        t.options
    );
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after the mount-flags cycle").await;
}

/// Kubelet's SELinux label option, as it sends it with CSIDriver `seLinuxMount: true`.
const SELINUX_CONTEXT: &str = r#"context="system_u:object_r:container_file_t:s0:c15,c25""#;

/// The SELinux label option passes the validator and reaches mount(8) whole. On a host
/// without SELinux, mount(8) drops it and the volume stages and publishes; a kernel that
/// refuses it fails NodeStageVolume with the mount's error, never INVALID_ARGUMENT, and
/// leaves nothing mounted.
#[tokio::test(flavor = "multi_thread")]
async fn selinux_context_option_reaches_the_mount() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = capability(
        AccessType::Mount(MountVolume {
            fs_type: "ext4".to_owned(),
            mount_flags: vec!["noatime".to_owned(), SELINUX_CONTEXT.to_owned()],
            ..Default::default()
        }),
        Mode::SingleNodeWriter,
    );
    let v = create(&mut d, "selinux", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("selinux");
    let target = d.target("selinux");
    let r = d
        .node
        .node_stage_volume(stage_request(&id, &staging, &cap))
        .await;
    match r {
        Ok(_) => {
            // An option after the label would be lost if mount(8) had split the label.
            let m = mount_at(&staging).expect("staging path is not mounted");
            assert!(
                m.options.split(',').any(|o| o == "noatime"),
                "staging mount options {:?} lack noatime",
                m.options
            );
            publish(&mut d, &id, &staging, &target, &cap, false).await;
            unpublish(&mut d, &id, &target).await;
            unstage(&mut d, &id, &staging).await;
        }
        Err(s) => {
            assert_ne!(
                s.code(),
                Code::InvalidArgument,
                "NodeStageVolume refused the SELinux option: {}",
                s.message()
            );
            assert!(
                mount_at(&staging).is_none(),
                "a failed NodeStageVolume left {staging} mounted"
            );
            iolane_tests::note(format!(
                "this host's mount refused the SELinux option: {:?}: {}",
                s.code(),
                s.message()
            ));
        }
    }
    delete(&mut d, &id).await;
    d.assert_no_leaks("after the SELinux option cycle").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_publish_refuses_writes() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = mount_cap("ext4");
    let v = create(&mut d, "ro", &cap, 64 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("ro");
    let (rw, ro) = (d.target("rw"), d.target("ro"));
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &rw, &cap, false).await;
    let data = pattern(7, 64 << 10);
    write_synced(&Path::new(&rw).join("f"), &data).expect("write through the rw target");

    for _ in 0..3 {
        publish(&mut d, &id, &staging, &ro, &cap, true).await;
    }
    let m = mount_at(&ro).expect("read-only target not mounted");
    assert!(
        m.read_only(),
        "read-only target mounted with {:?}",
        m.options
    );
    let erofs = nix::errno::Errno::EROFS as i32;
    assert_eq!(
        read_prefix(&Path::new(&ro).join("f"), data.len()).expect("read at ro target"),
        data
    );
    assert_write_refused(
        &Path::new(&ro).join("new"),
        &[erofs],
        "new file at the read-only target",
    );
    assert_write_refused(
        &Path::new(&ro).join("f"),
        &[erofs],
        "existing file at the read-only target",
    );

    // The same target asked for read-write now: incompatible with what is there.
    let r = d
        .node
        .node_publish_volume(publish_request(&id, &staging, &ro, &cap, false))
        .await;
    expect_code(
        r,
        Code::AlreadyExists,
        "NodePublishVolume rw on a target published ro",
    );

    unpublish(&mut d, &id, &ro).await;
    unpublish(&mut d, &id, &rw).await;
    unstage(&mut d, &id, &staging).await;

    // SINGLE_NODE_READER_ONLY: read-only even without the readonly flag.
    let reader = with_mode(cap.clone(), Mode::SingleNodeReaderOnly);
    let reader_target = d.target("reader");
    stage(&mut d, &id, &staging, &reader).await;
    publish(&mut d, &id, &staging, &reader_target, &reader, false).await;
    assert_eq!(
        read_prefix(&Path::new(&reader_target).join("f"), data.len()).expect("read"),
        data
    );
    assert_write_refused(
        &Path::new(&reader_target).join("f"),
        &[erofs],
        "SINGLE_NODE_READER_ONLY target",
    );
    unpublish(&mut d, &id, &reader_target).await;
    unstage(&mut d, &id, &staging).await;

    delete(&mut d, &id).await;
    d.assert_no_leaks("after read-only publish").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_block_publish_refuses_writes() {
    require_root!();
    let mut d = Driver::start().await;
    let cap = block_cap();
    let v = create(&mut d, "ro-block", &cap, 8 * MIB).await;
    let id = v.volume_id.clone();
    let staging = d.make_staging("ro-block");
    let target = d.target("ro-block");
    stage(&mut d, &id, &staging, &cap).await;
    publish(&mut d, &id, &staging, &target, &cap, true).await;
    read_prefix(Path::new(&target), 4096).expect("read the read-only block target");
    // Opening a device node for writing is refused with EROFS or EACCES, a write to a
    // read-only block device with EPERM; any of them means the data is safe.
    let refused = [
        nix::errno::Errno::EROFS as i32,
        nix::errno::Errno::EACCES as i32,
        nix::errno::Errno::EPERM as i32,
    ];
    assert_write_refused(Path::new(&target), &refused, "read-only block target");
    unpublish(&mut d, &id, &target).await;
    unstage(&mut d, &id, &staging).await;
    delete(&mut d, &id).await;
    d.assert_no_leaks("after read-only block publish").await;
}
