//! Focused tests for the faults the campaigns found, each replaying its interleaving on a
//! real kernel instead of waiting for the campaign to hit it.
//!
//! **A stale loop device path.** The loop backend listed an image's loop devices from
//! sysfs and then detached them by path. A device already detaching (its detach deferred
//! by an opener) could be released and taken by another volume's `losetup --find` in
//! between, and the later `losetup --detach` then detached *that* volume's device: mkfs
//! saw a device of size zero, a staged volume was left on a detaching device (NodePublish
//! answered "not staged" until the step deadline, and a restage attached the image a
//! second time). Here the other volume's attach is run by a command runner right before
//! the driver's `losetup --detach`, exactly where it happened.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use csi_driver::backend::Backend;
use csi_driver::backend::loopback::LoopBackend;
use csi_driver::os::command::RunFuture;
use csi_driver::os::{Cmd, CommandRunner, Os, Roots, SystemRunner};
use csi_driver::volume::{CapacityRange, CreateSpec, Parameters, volume_id_for};
use iolane_tests::{require_root, run, try_run};

type Hook = Box<dyn FnOnce() + Send>;

/// Runs commands for real; before the first `losetup --detach` it runs the hook (what
/// another call does at that moment).
struct Interleave {
    hook: Mutex<Option<Hook>>,
}

impl fmt::Debug for Interleave {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Interleave")
    }
}

static REAL: SystemRunner = SystemRunner;

impl CommandRunner for Interleave {
    fn run<'a>(&'a self, cmd: &'a Cmd) -> RunFuture<'a> {
        if cmd.render().starts_with("losetup --detach") {
            let hook = self
                .hook
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(h) = hook {
                h();
            }
        }
        REAL.run(cmd)
    }
}

impl Interleave {
    fn set(&self, hook: Hook) {
        *self.hook.lock().unwrap_or_else(PoisonError::into_inner) = Some(hook);
    }

    /// Drops a hook that did not run (and what it holds).
    fn clear(&self) {
        drop(
            self.hook
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

/// A loop backend in a tempdir over the real kernel, and the runner it spawns through.
fn backend(dir: &Path) -> (LoopBackend, Arc<Interleave>) {
    let runner = Arc::new(Interleave {
        hook: Mutex::new(None),
    });
    let os = Os::new(runner.clone(), Roots::default());
    let b = LoopBackend::open(os, dir.join("loop"), 10.0).expect("open the loop backend");
    (b, runner)
}

async fn create(b: &LoopBackend, name: &str) -> String {
    let spec = CreateSpec {
        id: volume_id_for(name),
        name: name.to_owned(),
        range: CapacityRange::default(),
        size: 16 << 20,
        fs_type: None,
        parameters: Parameters::default(),
        tier: None,
        source: None,
    };
    b.create(&spec).await.expect("create");
    spec.id
}

/// The backing file of `/dev/loopN` and whether it is detaching, from sysfs.
fn bound(dev: &Path) -> Option<(String, bool)> {
    let sys = Path::new("/sys/block").join(dev.file_name()?);
    let backing = std::fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    let autoclear = std::fs::read_to_string(sys.join("loop/autoclear")).ok()?;
    Some((backing.trim().to_owned(), autoclear.trim() == "1"))
}

/// What the hook found when it tried to bind the other volume's image to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Takeover {
    /// Bound: the other volume now uses the device.
    Taken(PathBuf),
    /// Refused: the device is still the detached volume's (the driver holds it open).
    Held,
    /// A third party (another test, another driver on the host) took the device first:
    /// this attempt shows nothing and is repeated.
    Lost,
}

/// The hook: `release` lets go of `dev` (a reader closing it, or another detach), then
/// the other volume's image is bound to exactly that device, as `losetup --find` does with
/// the lowest free one.
fn take_over(
    dev: PathBuf,
    image: PathBuf,
    own_image: PathBuf,
    release: impl FnOnce() + Send + 'static,
    outcome: Arc<Mutex<Option<Takeover>>>,
) -> Hook {
    Box::new(move || {
        release();
        let d = dev.display().to_string();
        let i = image.display().to_string();
        let got = if try_run("losetup", &[&d, &i]).is_ok() {
            Takeover::Taken(dev.clone())
        } else if bound(&dev).is_some_and(|(b, _)| Path::new(&b) == own_image) {
            Takeover::Held
        } else {
            Takeover::Lost
        };
        *outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(got);
    })
}

/// After the call: a device the other volume got in the hook must still be its own and
/// attached (not detaching); then it is detached. `None` when the attempt must be
/// repeated.
fn check_and_clean(
    outcome: &Mutex<Option<Takeover>>,
    other_image: &Path,
    what: &str,
) -> Option<()> {
    let got = outcome
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    let dev = match got {
        Some(Takeover::Lost) => return None,
        // The driver ran no `losetup --detach` (the device was already detaching), or
        // held the device so the other volume could not get it: nothing detached under it.
        None | Some(Takeover::Held) => return Some(()),
        Some(Takeover::Taken(dev)) => dev,
    };
    let state = bound(&dev);
    let d = dev.display().to_string();
    let _ = try_run("losetup", &["--detach", &d]);
    assert_eq!(
        state,
        Some((other_image.display().to_string(), false)),
        "{what}: {} was the other volume's when the driver's losetup ran, and it was detached under it",
        dev.display()
    );
    Some(())
}

/// The two tests bind and release devices that the other could take: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
/// Attempts before a test gives up because third parties keep taking the device.
const ATTEMPTS: usize = 10;

/// Delete of a volume whose only device is detaching (an unstage's detach deferred by a
/// reader): the reader closes, the other volume binds the device, and only then does
/// delete's `losetup --detach` run.
#[tokio::test]
async fn delete_never_detaches_a_device_that_became_another_volumes() {
    require_root!();
    let _serial = SERIAL.lock().await;
    for attempt in 0..ATTEMPTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (b, runner) = backend(dir.path());
        let victim = create(&b, &format!("fault-stale-victim-{attempt}")).await;
        let gone = create(&b, &format!("fault-stale-deleted-{attempt}")).await;
        let victim_image = dir.path().join(format!("loop/{victim}.img"));
        let gone_image = dir.path().join(format!("loop/{gone}.img"));
        let dev = b.attach(&gone).await.expect("attach");
        // A reader holds the device: the unstage's detach is deferred.
        let reader = File::open(&dev).expect("open the loop device");
        b.detach(&gone).await.expect("detach");
        assert!(
            bound(&dev).is_some_and(|(_, detaching)| detaching),
            "{} should be detaching while the reader has it open",
            dev.display()
        );
        let outcome = Arc::new(Mutex::new(None));
        runner.set(take_over(
            dev.clone(),
            victim_image.clone(),
            gone_image,
            move || drop(reader),
            outcome.clone(),
        ));
        b.delete(&gone).await.expect("delete");
        runner.clear();
        let done = check_and_clean(&outcome, &victim_image, "delete");
        assert!(b.devices(&gone).await.expect("devices").is_empty());
        b.delete(&victim).await.expect("delete");
        if done.is_some() {
            return;
        }
    }
    panic!("the device was taken by a third party in each of {ATTEMPTS} attempts");
}

/// Unstage's detach of a device that another party detaches (and the other volume binds)
/// between the listing and the driver's `losetup --detach`.
#[tokio::test]
async fn detach_never_detaches_a_device_that_became_another_volumes() {
    require_root!();
    let _serial = SERIAL.lock().await;
    for attempt in 0..ATTEMPTS {
        let dir = tempfile::tempdir().expect("tempdir");
        let (b, runner) = backend(dir.path());
        let victim = create(&b, &format!("fault-race-victim-{attempt}")).await;
        let unstaged = create(&b, &format!("fault-race-unstaged-{attempt}")).await;
        let victim_image = dir.path().join(format!("loop/{victim}.img"));
        let unstaged_image = dir.path().join(format!("loop/{unstaged}.img"));
        let dev = b.attach(&unstaged).await.expect("attach");
        let outcome = Arc::new(Mutex::new(None));
        let d = dev.display().to_string();
        runner.set(take_over(
            dev.clone(),
            victim_image.clone(),
            unstaged_image,
            move || {
                // Detached by someone else first; deferred while the driver holds it.
                run("losetup", &["--detach", &d]);
            },
            outcome.clone(),
        ));
        b.detach(&unstaged).await.expect("detach");
        let ran = outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some();
        assert!(ran, "the driver's losetup --detach should have run");
        runner.clear();
        let done = check_and_clean(&outcome, &victim_image, "detach");
        b.delete(&unstaged).await.expect("delete");
        b.delete(&victim).await.expect("delete");
        if done.is_some() {
            return;
        }
    }
    panic!("the device was taken by a third party in each of {ATTEMPTS} attempts");
}
