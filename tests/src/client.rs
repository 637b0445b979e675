//! Talking CSI to a driver: the gRPC channel over its Unix socket (tonic's own `unix://`
//! endpoint) and the helpers that unwrap a reply or assert its error code.

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Response, Status};

/// How long a spawned driver may take to answer its first Probe: 60 s, or
/// `IOLANE_TEST_START_SECS`. A node restarted after a SIGKILL first waits for its
/// predecessor's children (up to 330 s: mkfs's limit), which under emulation in the VM can
/// take minutes: the VM's kill -9 campaign raises it.
pub(crate) fn start_deadline() -> Duration {
    let secs = std::env::var("IOLANE_TEST_START_SECS")
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|e| panic!("IOLANE_TEST_START_SECS={v:?} is not a number: {e}"))
        })
        .unwrap_or(60);
    Duration::from_secs(secs)
}
/// Upper bound for one RPC (the driver gives mkfs 300 s), so a hung call fails the test
/// instead of hanging it.
const RPC_TIMEOUT: Duration = Duration::from_secs(330);

/// A gRPC channel over the Unix socket at `path`, each RPC bounded by 330 s.
pub async fn connect(path: &Path) -> Result<Channel, tonic::transport::Error> {
    connect_with_timeout(path, RPC_TIMEOUT).await
}

/// A gRPC channel over the Unix socket at `path` (absolute), each RPC bounded by `timeout`.
pub async fn connect_with_timeout(
    path: &Path,
    timeout: Duration,
) -> Result<Channel, tonic::transport::Error> {
    Endpoint::from_shared(format!("unix://{}", path.display()))?
        .timeout(timeout)
        .connect()
        .await
}

/// Unwraps an RPC reply that must succeed, naming the call on failure.
#[track_caller]
pub fn ok<T>(res: Result<Response<T>, Status>, what: &str) -> T {
    match res {
        Ok(r) => r.into_inner(),
        Err(s) => panic!("{what}: expected OK, got {:?}: {}", s.code(), s.message()),
    }
}

/// Asserts that an RPC failed with `code` and returns the status.
#[track_caller]
pub fn expect_code<T: Debug>(res: Result<Response<T>, Status>, code: Code, what: &str) -> Status {
    match res {
        Ok(r) => panic!("{what}: expected {code:?}, got OK: {:?}", r.get_ref()),
        Err(s) => {
            assert_eq!(
                s.code(),
                code,
                "{what}: expected {code:?}, got {:?}: {}",
                s.code(),
                s.message()
            );
            s
        }
    }
}
