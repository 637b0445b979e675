//! Admission: the ratio and the watermarks, and pool usage read in-process.

use super::*;

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
