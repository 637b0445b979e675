//! `csi-call`: single CSI calls over a Unix socket for the shell-driven control-plane tests
//! (tests/k8s/retier.sh), which have no gRPC client of their own. Prints one line:
//! `ok <ms> ms` or `error <Code> <ms> ms: <message>`, and exits 0 only on OK.
//!
//!   csi-call SOCKET publish-block VOLUME_ID STAGING TARGET POD_UID
//!   csi-call SOCKET modify VOLUME_ID [KEY=VALUE...]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use csi_proto::v1 as csi;
use csi_proto::v1::controller_client::ControllerClient;
use csi_proto::v1::node_client::NodeClient;
use iolane_tests::client::connect_with_timeout;
use iolane_tests::requests::{block_cap, publish_request, stage_request};

/// One line to stdout (the result) or stderr (usage and connection errors).
fn say(to_stderr: bool, line: &str) {
    let _ = if to_stderr {
        writeln!(std::io::stderr(), "{line}")
    } else {
        writeln!(std::io::stdout(), "{line}")
    };
}

const USAGE: &str = "usage: csi-call SOCKET publish-block VOLUME_ID STAGING TARGET POD_UID\n       csi-call SOCKET modify VOLUME_ID [KEY=VALUE...]";

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(socket), Some(call)) = (args.first(), args.get(1)) else {
        say(true, USAGE);
        return ExitCode::from(2);
    };
    let channel = match connect_with_timeout(Path::new(socket), Duration::from_secs(120)).await {
        Ok(c) => c,
        Err(e) => {
            say(true, &format!("csi-call: connecting to {socket}: {e}"));
            return ExitCode::from(2);
        }
    };
    let start = Instant::now();
    let result: Result<(), tonic::Status> = match (call.as_str(), &args[2..]) {
        ("publish-block", [id, staging, target, pod]) => {
            let mut node = NodeClient::new(channel);
            let cap = block_cap();
            match node
                .node_stage_volume(stage_request(id, staging, &cap))
                .await
            {
                Err(e) => Err(e),
                Ok(_) => {
                    let mut req = publish_request(id, staging, target, &cap, false);
                    req.volume_context
                        .insert("csi.storage.k8s.io/pod.uid".to_owned(), pod.clone());
                    node.node_publish_volume(req).await.map(|_| ())
                }
            }
        }
        ("modify", [id, pairs @ ..]) => {
            let mut parameters = HashMap::new();
            for p in pairs {
                let Some((k, v)) = p.split_once('=') else {
                    say(true, &format!("csi-call: {p:?} is not KEY=VALUE"));
                    return ExitCode::from(2);
                };
                parameters.insert(k.to_owned(), v.to_owned());
            }
            ControllerClient::new(channel)
                .controller_modify_volume(csi::ControllerModifyVolumeRequest {
                    volume_id: id.clone(),
                    mutable_parameters: parameters,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }
        _ => {
            say(true, USAGE);
            return ExitCode::from(2);
        }
    };
    let ms = start.elapsed().as_millis();
    match result {
        Ok(()) => {
            say(false, &format!("ok {ms} ms"));
            ExitCode::SUCCESS
        }
        Err(s) => {
            say(
                false,
                &format!("error {:?} {ms} ms: {}", s.code(), s.message()),
            );
            ExitCode::FAILURE
        }
    }
}
