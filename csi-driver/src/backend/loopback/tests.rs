//! The loop backend's own tests: create, list, delete, admission, sweep and expansion on
//! a temp state dir with a recording command runner.

use std::sync::Arc;

use super::*;
use crate::os::{Roots, command::RecordingRunner};
use crate::volume::{CapacityRange, Parameters};

fn backend(dir: &Path, ratio: f64) -> LoopBackend {
    let roots = Roots {
        proc: dir.join("proc"),
        sys: dir.join("sys"),
        dev: dir.join("dev"),
    };
    let os = Os::new(Arc::new(RecordingRunner::default()), roots);
    LoopBackend::open(os, dir.join("loop"), ratio).unwrap()
}

fn new(c: Created) -> Volume {
    match c {
        Created::New(v) => v,
        Created::Existing(v) => panic!("{} existed already", v.id),
    }
}

fn spec(name: &str, size: u64) -> CreateSpec {
    CreateSpec {
        id: crate::volume::volume_id_for(name),
        name: name.to_owned(),
        range: CapacityRange::default(),
        size,
        fs_type: None,
        parameters: Parameters::default(),
        tier: None,
        source: None,
    }
}

#[tokio::test]
async fn create_list_delete_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), 10.0);
    let Created::New(v) = b.create(&spec("a", 8 << 20)).await.unwrap() else {
        panic!("a new volume was reported as existing");
    };
    assert_eq!(b.list().await.unwrap(), vec![v.clone()]);
    // A repeat returns the volume as it is, even with another size, and writes nothing.
    assert_eq!(
        b.create(&spec("a", 4 << 20)).await.unwrap(),
        Created::Existing(v.clone())
    );
    assert_eq!(fs::metadata(b.store.image(&v.id)).unwrap().len(), 8 << 20);
    let img = b.store.image(&v.id);
    assert_eq!(fs::metadata(&img).unwrap().len(), 8 << 20);
    // Sparse: nothing allocated yet.
    assert!(fs::metadata(&img).unwrap().blocks() * 512 < 1 << 20);
    assert!(b.delete(&v.id).await.unwrap());
    assert!(!b.delete(&v.id).await.unwrap());
    assert_eq!(fs::read_dir(&b.store.dir).unwrap().count(), 0);
}

#[tokio::test]
async fn over_ratio_is_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), 1.0);
    let cap = b.capacity(&Parameters::default()).await.unwrap();
    let err = b
        .create(&spec("huge", cap.available + GRANULARITY))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert_eq!(fs::read_dir(&b.store.dir).unwrap().count(), 0);
}

#[tokio::test]
async fn device_class_parameter_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), 10.0);
    let mut s = spec("classy", 4 << 20);
    s.parameters.device_class = Some("fast".to_owned());
    let err = b.create(&s).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(r#"parameters["iolane.dev/device-class"]"#),
        "{err}"
    );
    let err = b.capacity(&s.parameters).await.unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    assert_eq!(fs::read_dir(&b.store.dir).unwrap().count(), 0);
}

#[tokio::test]
async fn restart_sweeps_orphans_and_keeps_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), 10.0);
    let v = new(b.create(&spec("keep", 4 << 20)).await.unwrap());
    fs::write(b.store.dir.join("iol-orphan.img"), b"").unwrap();
    fs::write(b.store.dir.join("iol-x.json.tmp"), b"{").unwrap();
    drop(b);
    let b = backend(dir.path(), 10.0);
    assert_eq!(b.list().await.unwrap(), vec![v]);
    assert_eq!(fs::read_dir(&b.store.dir).unwrap().count(), 2);
}

/// A device of the image that is already detaching (its detach deferred by a reader)
/// is never detached again: by the time `losetup` ran it could be another volume's.
#[tokio::test]
async fn detach_and_delete_leave_a_detaching_device_alone() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Arc::new(RecordingRunner::default());
    let roots = Roots {
        proc: dir.path().join("proc"),
        sys: dir.path().join("sys"),
        dev: dir.path().join("dev"),
    };
    let b = LoopBackend::open(
        Os::new(runner.clone(), roots),
        dir.path().join("loop"),
        10.0,
    )
    .unwrap();
    let v = new(b.create(&spec("leaving", 4 << 20)).await.unwrap());
    let sys = dir.path().join("sys/block/loop3");
    fs::create_dir_all(sys.join("loop")).unwrap();
    fs::write(
        sys.join("loop/backing_file"),
        format!("{}\n", b.store.image(&v.id).display()),
    )
    .unwrap();
    fs::write(sys.join("loop/autoclear"), "1\n").unwrap();
    fs::create_dir_all(dir.path().join("dev")).unwrap();
    fs::write(dir.path().join("dev/loop3"), b"").unwrap();
    assert_eq!(b.devices(&v.id).await.unwrap().len(), 1);
    assert_eq!(b.attached(&v.id).await.unwrap(), None);
    b.detach(&v.id).await.unwrap();
    assert!(b.delete(&v.id).await.unwrap());
    assert!(runner.calls().is_empty(), "{:?}", runner.calls());
}

#[tokio::test]
async fn expand_grows_file_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let b = backend(dir.path(), 10.0);
    let v = new(b.create(&spec("grow", 4 << 20)).await.unwrap());
    assert_eq!(b.expand(&v.id, 8 << 20).await.unwrap(), 8 << 20);
    assert_eq!(b.expand(&v.id, 2 << 20).await.unwrap(), 8 << 20);
    assert_eq!(b.get(&v.id).await.unwrap().unwrap().capacity_bytes, 8 << 20);
    assert_eq!(fs::metadata(b.store.image(&v.id)).unwrap().len(), 8 << 20);
}
