//! Admission: the ratio and the watermarks, and pool usage read in-process, through the
//! backend and as the pure functions it uses.

use super::*;
use crate::backend::lvm::admission::{
    PoolUsage, admit, capacity_of, in_process_usage, past_watermark, provisionable,
};
use crate::backend::lvm::index::PoolFacts;
use crate::volume::Capacity;

#[tokio::test]
async fn admission_refuses_past_the_ratio_and_the_watermarks() {
    let f = Fixture::new();
    let b = f.adopted(&[]).await;
    let mark = f.runner.calls().len();
    // Ratio 4 x 1 GiB of pool data = 4 GiB; 3 GiB are provisioned already.
    let used = tagged("big", 3 << 30);
    f.answer_lvs(&[pool(1.0, 1.0), used.clone()]);
    let cap = b.capacity(&Parameters::default()).await.unwrap();
    assert_eq!(cap.available, 1 << 30);
    f.answer_lvs(&[pool(1.0, 1.0), used.clone()]);
    let err = b
        .create(&spec("more", (1 << 30) + EXTENT))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert!(err.to_string().contains("overprovision ratio 4"), "{err}");

    f.answer_lvs(&[pool(90.5, 1.0)]);
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(
        err.to_string().contains("data usage is 90.50%") && err.to_string().contains("90%"),
        "{err}"
    );
    f.answer_lvs(&[pool(10.0, 80.0)]);
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(
        err.to_string().contains("metadata usage is 80.00%"),
        "{err}"
    );
    f.answer_lvs(&[pool(10.0, 80.0)]);
    assert_eq!(
        b.capacity(&Parameters::default()).await.unwrap().available,
        0
    );
    assert_eq!(f.effects(mark), Vec::<String>::new());
}

#[tokio::test]
async fn with_the_pool_status_in_process_a_create_is_one_lvcreate() {
    let f = Fixture::new();
    // 1 GiB of pool data x ratio 4; 2 GiB of iolane volumes and 1 GiB of someone else's.
    let mut b = f
        .adopted(&[
            tagged("old", 2 << 30),
            thin("someone-elses", 1 << 30, &[], true),
        ])
        .await;
    let rw = dm_fixture("dmsetup-status-with-thin.txt", "iolane-pool-tpool");
    let full = dm_fixture("dmsetup-status-small-full.txt", "");
    ScriptedStatus::install(&mut b, &[&rw, &rw, &rw, &full, &rw]);
    let mark = f.runner.calls().len();
    let s = spec("new", 512 << 20);
    let v = new(b.create(&s).await.unwrap());
    assert_eq!(v.capacity_bytes, 512 << 20);
    let calls = f.runner.calls()[mark..].to_vec();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        calls[0].starts_with("lvcreate --type thin -V 536870912b"),
        "{calls:?}"
    );
    // 3.5 GiB provisioned now (the new volume counts): 512 MiB are left.
    let err = b
        .create(&spec("more", (512 << 20) + EXTENT))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    assert!(
        err.to_string().contains("3758096384 bytes are provisioned"),
        "{err}"
    );
    // A create in flight (admitted, lvcreate running) counts like a volume.
    b.index()
        .reserved
        .insert(volume_id_for("flying"), (0, 256 << 20));
    let err = b.create(&spec("less", 512 << 20)).await.unwrap_err();
    assert!(
        err.to_string().contains("4026531840 bytes are provisioned"),
        "{err}"
    );
    b.index().reserved.clear();
    // The pool's own figures from the kernel: out of data space is past the watermark.
    let err = b.create(&spec("small", EXTENT)).await.unwrap_err();
    assert!(err.to_string().contains("data usage is 100.00%"), "{err}");
    // A deleted volume gives its bytes back to admission at once.
    f.activate("iolane", &v.id);
    assert!(b.delete(&v.id).await.unwrap());
    std::fs::remove_file(f.dir.path().join("dev/iolane").join(&v.id)).unwrap();
    new(b.create(&spec("more", (512 << 20) + EXTENT)).await.unwrap());
    assert!(
        !f.runner.calls()[mark..]
            .iter()
            .any(|c| c.starts_with("lvs ")),
        "{:?}",
        f.runner.calls()
    );
    // Once the status cannot be read, admission falls back to one report.
    f.answer_lvs(&[pool(95.0, 1.0)]);
    let err = b.create(&spec("last", EXTENT)).await.unwrap_err();
    assert!(err.to_string().contains("data usage is 95.00%"), "{err}");
}

/// The figures admission sees: a 1 GiB pool at the default ratio of 4.
fn figures(provisioned: u64, data_percent: f64, metadata_percent: f64) -> PoolUsage {
    PoolUsage {
        data_bytes: POOL_BYTES,
        provisioned,
        data_percent,
        metadata_percent,
        extent: EXTENT,
    }
}

#[test]
fn admission_allows_up_to_the_ratio_in_whole_extents() {
    let c = DeviceClass::with_defaults("default", vec![PathBuf::from("/dev/sda")]);
    // 4 GiB allowed; one byte past 3 GiB provisioned leaves 1 GiB less a partial extent.
    let u = figures((3 << 30) + 1, 10.0, 10.0);
    let left = (1 << 30) - EXTENT;
    assert_eq!(provisionable(&c, &u), (left, 4 << 30));
    assert_eq!(
        capacity_of(&c, &u),
        Capacity {
            available: left,
            max_volume_size: left,
        }
    );
    assert!(admit(&c, &u, left).is_ok());
    let err = admit(&c, &u, left + 1).unwrap_err();
    assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    // Provisioned past the limit (a foreign LV, a lowered ratio): nothing is left.
    let over = figures(5 << 30, 10.0, 10.0);
    assert_eq!(provisionable(&c, &over).0, 0);
    assert!(admit(&c, &over, EXTENT).is_err());
}

#[test]
fn watermarks_refuse_at_the_mark_and_zero_the_capacity() {
    let c = DeviceClass::with_defaults("default", vec![PathBuf::from("/dev/sda")]);
    assert_eq!(past_watermark(&c, &figures(0, 89.99, 79.99)), None);
    for (data, meta, says) in [(90.0, 0.0, "data usage"), (0.0, 80.0, "metadata usage")] {
        let u = figures(0, data, meta);
        let why = past_watermark(&c, &u).expect("at the watermark");
        assert!(why.contains(says), "{why}");
        assert_eq!(capacity_of(&c, &u).available, 0);
        let err = admit(&c, &u, EXTENT).unwrap_err();
        assert!(matches!(err, Error::ResourceExhausted(_)), "{err}");
    }
}

#[test]
fn in_process_usage_adds_the_class_volumes_to_the_foreign_ones() {
    let status =
        os::dm::parse_thin_pool_status(&dm_fixture("dmsetup-status-small-full.txt", "")).unwrap();
    let facts = PoolFacts {
        data_bytes: POOL_BYTES,
        extent: EXTENT,
        foreign: 3 << 20,
    };
    let u = in_process_usage(facts, 5 << 20, &status);
    assert_eq!((u.data_bytes, u.extent), (POOL_BYTES, EXTENT));
    assert_eq!(u.provisioned, 8 << 20);
    assert!((u.data_percent - status.data_percent()).abs() < f64::EPSILON);
    assert!((u.metadata_percent - status.metadata_percent()).abs() < f64::EPSILON);
}
