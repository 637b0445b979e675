//! The host the suites run on: root and capabilities, programs in `$PATH`, the `iolane`
//! binary under test, spawning host programs, printing notes and polling with a deadline.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Default deadline of [`poll`].
pub const POLL_DEADLINE: Duration = Duration::from_secs(15);
/// How often [`poll`] and the harness's own waits look again.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Prints a line for the person reading test output.
#[allow(
    clippy::print_stderr,
    reason = "the harness reports skips, leaks and driver logs on stderr"
)]
pub fn note(msg: impl std::fmt::Display) {
    eprintln!("{msg}");
}

/// Set (to `1`) by the VM runners (`tests/vm/lvm-suite.sh`, `tests/vm/tiers.sh`): every
/// prerequisite a test checks is expected there, so a missing one fails the test instead
/// of skipping it (a skip would be reported as a pass).
pub const REQUIRE_PREREQS_ENV: &str = "IOLANE_REQUIRE_VM_PREREQS";

/// Whether a missing prerequisite fails the test ([`REQUIRE_PREREQS_ENV`] is `1`).
pub fn prereqs_required() -> bool {
    std::env::var(REQUIRE_PREREQS_ENV).is_ok_and(|v| v == "1")
}

/// A test's prerequisite is missing: prints "skipped: `reason`" on a host, where that is
/// legitimate; panics when [`prereqs_required`] (in the VM, where it must be there).
#[track_caller]
pub fn skip(reason: impl std::fmt::Display) {
    assert!(
        !prereqs_required(),
        "prerequisite missing where {REQUIRE_PREREQS_ENV}=1 requires it: {reason}"
    );
    note(format!("skipped: {reason}"));
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Returns from the calling test with "skipped: not root" unless running as root (fails
/// it instead under [`REQUIRE_PREREQS_ENV`], see [`skip`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::is_root() {
            $crate::skip("not root");
            return;
        }
    };
}

/// Linux capability number of `CAP_SYS_RESOURCE` (needed for online ext4 resize).
pub const CAP_SYS_RESOURCE: u32 = 24;

/// Whether this process has capability number `cap` in its effective set.
pub fn has_capability(cap: u32) -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|bits| bits & (1 << cap) != 0)
}

/// Whether `program` is an executable in `$PATH`, `/usr/sbin` or `/sbin`.
pub fn have_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .any(|d| d.join(program).is_file())
}

/// The `iolane` binary under test: `$IOLANE_BIN`, else `$CARGO_TARGET_DIR/debug/iolane`,
/// else `<workspace>/target/debug/iolane`.
pub fn binary() -> PathBuf {
    let path = if let Some(p) = std::env::var_os("IOLANE_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("debug/iolane")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/iolane")
    };
    assert!(
        path.is_file(),
        "iolane binary not found at {}: run `cargo build -p csi-driver` first (or set IOLANE_BIN)",
        path.display()
    );
    path
}

/// A command for a host program. The harness has to start the binary under test and
/// `losetup`; the driver's own rule (processes only through its `os::CommandRunner`)
/// does not reach across into its test harness.
#[allow(
    clippy::disallowed_methods,
    reason = "the harness spawns the binary under test and cleanup tools"
)]
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::new(program)
}

/// Runs a host program; its stdout, or why it failed (for clean-ups, which must not panic).
pub fn try_run(program: &str, args: &[&str]) -> Result<String, String> {
    match command(program).args(args).env("LC_ALL", "C").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{program} {args:?}: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("{program} {args:?}: {e}")),
    }
}

/// Runs a host program and returns its stdout; panics with its stderr unless it exits 0.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = command(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} exited {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Calls `check` until it returns true or `deadline` passes; returns the last answer.
pub async fn poll(deadline: Duration, mut check: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
