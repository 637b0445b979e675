//! [`Central`]: one `iolane controller` (the central Deployment's role) on a socket in its
//! own tempdir, killed on drop.

use std::process::{Child, Stdio};
use std::time::Instant;

use tonic::transport::Channel;

use crate::csi;
use crate::csi::identity_client::IdentityClient;
use crate::{POLL_INTERVAL, binary, command, connect, start_deadline};

/// A running `iolane controller` (the central Deployment's role) on a socket in its own
/// tempdir; killed on drop.
#[derive(Debug)]
pub struct Central {
    child: Child,
    pub channel: Channel,
    _tmp: tempfile::TempDir,
}

impl Central {
    /// Starts `iolane controller` and waits until Probe answers ready.
    pub async fn start() -> Central {
        let tmp = tempfile::Builder::new()
            .prefix("iolane-central-")
            .tempdir()
            .expect("create tempdir");
        let socket = tmp.path().join("controller.sock");
        let mut child = command(binary())
            .arg("controller")
            .arg("--endpoint")
            .arg(format!("unix://{}", socket.display()))
            .env("IOLANE_LOG", "info,csi_driver=debug")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn iolane controller");
        let deadline = Instant::now() + start_deadline();
        loop {
            if let Some(status) = child.try_wait().expect("poll iolane") {
                panic!("iolane controller exited with {status} before serving");
            }
            if socket.exists()
                && let Ok(channel) = connect(&socket).await
                && let Ok(r) = IdentityClient::new(channel.clone())
                    .probe(csi::ProbeRequest {})
                    .await
                && r.into_inner().ready == Some(true)
            {
                return Central {
                    child,
                    channel,
                    _tmp: tmp,
                };
            }
            assert!(
                Instant::now() < deadline,
                "iolane controller did not become ready within {:?}",
                start_deadline()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Central {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
