//! The node's readiness as Events on its Node object: a Warning `BackendNotReady` with the
//! reason when the backend turns not ready (also when it is not ready at start), a Normal
//! `BackendReady` when it recovers; nothing for the checks in between, ready or not. The
//! reason is also `/healthz`'s body (`http::watch_readiness` checks; this watches them).
//!
//! The Event's object reference is the Node with the node ID as name and as UID, as the
//! kubelet writes its own node Events, so that `kubectl describe node` lists them. RBAC:
//! `create`/`patch` on `events` (events.k8s.io), which the node's ClusterRole has for its
//! re-tiering Events.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::watch;

/// The Event for a change of readiness from `was_ready` (`None`: nothing checked yet) to
/// `now`, or `None` when readiness did not change.
pub fn transition(was_ready: Option<bool>, now: &Result<(), String>) -> Option<Event> {
    match (was_ready, now) {
        (Some(false), Err(_)) | (None | Some(true), Ok(())) => None,
        (None | Some(true), Err(reason)) => Some(Event {
            type_: EventType::Warning,
            reason: "BackendNotReady".to_owned(),
            note: Some(format!("iolane: the backend is not ready: {reason}")),
            action: "CheckReadiness".to_owned(),
            secondary: None,
        }),
        (Some(false), Ok(())) => Some(Event {
            type_: EventType::Normal,
            reason: "BackendReady".to_owned(),
            note: Some("iolane: the backend is ready again".to_owned()),
            action: "CheckReadiness".to_owned(),
            secondary: None,
        }),
    }
}

/// The Node `node_name` as an Event's object reference (UID = name: module doc).
pub fn node_reference(node_name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_owned()),
        kind: Some("Node".to_owned()),
        name: Some(node_name.to_owned()),
        uid: Some(node_name.to_owned()),
        ..ObjectReference::default()
    }
}

/// Writes an Event on Node `node_name` at each change of `readiness`, until its sender is
/// gone. An Event the API refuses is logged and tried again at the next check, so an
/// outage of the API server at the moment of the change does not lose it.
pub async fn run(
    client: Client,
    node_name: String,
    instance: Option<String>,
    mut readiness: watch::Receiver<Result<(), String>>,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "iolane-node".to_owned(),
            instance,
        },
    );
    let reference = node_reference(&node_name);
    let mut was_ready = None;
    // The channel's first value is a placeholder: only real checks count.
    while readiness.changed().await.is_ok() {
        let now = readiness.borrow_and_update().clone();
        let Some(event) = transition(was_ready, &now) else {
            continue;
        };
        match recorder.publish(&event, &reference).await {
            Ok(()) => {
                tracing::info!(node.name = %node_name, event.reason = %event.reason, "readiness event written");
                was_ready = Some(now.is_ok());
            }
            Err(e) => {
                tracing::warn!(node.name = %node_name, event.reason = %event.reason, error = %e, "cannot write the readiness event; trying again at the next check");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reasons(checks: &[Result<(), String>]) -> Vec<String> {
        let mut was_ready = None;
        let mut out = Vec::new();
        for now in checks {
            if let Some(e) = transition(was_ready, now) {
                out.push(format!(
                    "{:?} {}: {}",
                    e.type_,
                    e.reason,
                    e.note.unwrap_or_default()
                ));
            }
            was_ready = Some(now.is_ok());
        }
        out
    }

    #[test]
    fn one_event_per_change_not_per_check() {
        let down = || Err("state directory /x: gone".to_owned());
        assert_eq!(
            reasons(&[
                Ok(()),
                Ok(()),
                down(),
                down(),
                down(),
                Ok(()),
                Ok(()),
                down()
            ]),
            [
                "Warning BackendNotReady: iolane: the backend is not ready: state directory /x: gone",
                "Normal BackendReady: iolane: the backend is ready again",
                "Warning BackendNotReady: iolane: the backend is not ready: state directory /x: gone",
            ]
        );
    }

    #[test]
    fn not_ready_at_start_is_told_and_ready_at_start_is_not() {
        assert_eq!(reasons(&[Ok(()), Ok(())]), Vec::<String>::new());
        assert_eq!(
            reasons(&[
                Err("no VG".to_owned()),
                Err("still no VG".to_owned()),
                Ok(())
            ]),
            [
                "Warning BackendNotReady: iolane: the backend is not ready: no VG",
                "Normal BackendReady: iolane: the backend is ready again",
            ]
        );
    }

    #[test]
    fn the_reference_is_the_node_as_the_kubelet_names_it() {
        let r = node_reference("worker-1");
        assert_eq!(r.kind.as_deref(), Some("Node"));
        assert_eq!(r.api_version.as_deref(), Some("v1"));
        assert_eq!(r.name.as_deref(), Some("worker-1"));
        assert_eq!(r.uid.as_deref(), Some("worker-1"));
        assert_eq!(r.namespace, None);
    }
}
