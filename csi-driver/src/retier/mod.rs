//! Live re-tiering through the PV: the desired state `iolane controller` records on a
//! volume's PV and the acknowledgement its owning node writes back, as PV annotations.
//!
//! ```text
//! iolane.dev/desired-parameters   {"iolane.dev/tier":"streaming"}   the latest request's
//!                                 mutable_parameters (JSON, keys sorted)
//! iolane.dev/desired-generation   3        grows by one per different request
//! iolane.dev/desired-by           VolumeAttributesClass iolane-streaming
//! iolane.dev/applied-generation   3        the node's acknowledgement
//! iolane.dev/refused-generation   3: ...   the node could not apply that generation
//! ```
//!
//! Only the node that holds a volume can change its stored tier and its pods' caps, so the
//! controller ([`central`]) validates a ControllerModifyVolume, records it here and waits
//! (bounded) for the acknowledgement; the node ([`node`]) watches its PVs and their PVCs,
//! applies, and acknowledges. The PV is the only store: a restarted controller finds the
//! request it recorded (same parameters, same generation), a node that was down applies
//! it when its watch lists the PVs again, and applying twice changes nothing.
//!
//! This file holds the annotation model as pure functions; `tests.rs` covers them.

pub mod central;
pub mod node;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use iops_controller::keys;
use serde_json::{Value, json};

/// A recorded request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub generation: u64,
    pub parameters: BTreeMap<String, String>,
    /// Who asked (for the node's Event), when the controller could tell.
    pub by: Option<String>,
}

/// What a PV's annotations say about re-tiering.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PvState {
    pub desired: Option<Desired>,
    /// The last generation the owning node applied (0: none).
    pub applied: u64,
    /// A generation the node refused, and why.
    pub refused: Option<(u64, String)>,
}

fn generation(key: &str, value: &str) -> Result<u64, String> {
    value
        .parse::<u64>()
        .map_err(|_| format!("PV annotation {key}: {value:?} is not a generation number"))
}

impl PvState {
    /// Reads the annotations; a malformed one is an error naming it.
    pub fn of(annotations: Option<&BTreeMap<String, String>>) -> Result<PvState, String> {
        let empty = BTreeMap::new();
        let a = annotations.unwrap_or(&empty);
        let desired = match (
            a.get(keys::DESIRED_GENERATION),
            a.get(keys::DESIRED_PARAMETERS),
        ) {
            (None, None) => None,
            (Some(g), Some(p)) => Some(Desired {
                generation: generation(keys::DESIRED_GENERATION, g)?,
                parameters: serde_json::from_str(p).map_err(|e| {
                    format!(
                        "PV annotation {}: not a JSON object of strings: {e}",
                        keys::DESIRED_PARAMETERS
                    )
                })?,
                by: a.get(keys::DESIRED_BY).cloned(),
            }),
            _ => {
                return Err(format!(
                    "PV annotations {} and {} must be set together",
                    keys::DESIRED_GENERATION,
                    keys::DESIRED_PARAMETERS
                ));
            }
        };
        let applied = match a.get(keys::APPLIED_GENERATION) {
            Some(g) => generation(keys::APPLIED_GENERATION, g)?,
            None => 0,
        };
        let refused = match a.get(keys::REFUSED_GENERATION) {
            Some(r) => {
                let (g, why) = r.split_once(": ").unwrap_or((r, ""));
                Some((generation(keys::REFUSED_GENERATION, g)?, why.to_owned()))
            }
            None => None,
        };
        Ok(PvState {
            desired,
            applied,
            refused,
        })
    }

    /// The recorded request the node has not dealt with yet (neither applied nor refused).
    pub fn pending(&self) -> Option<&Desired> {
        let d = self.desired.as_ref()?;
        let refused = self
            .refused
            .as_ref()
            .is_some_and(|(g, _)| *g == d.generation);
        (d.generation > self.applied && !refused).then_some(d)
    }

    /// The generation a new, different request gets.
    pub fn next_generation(&self) -> u64 {
        self.desired
            .as_ref()
            .map_or(0, |d| d.generation)
            .max(self.applied)
            + 1
    }
}

/// `mutable_parameters` as the annotation stores them: a JSON object, keys sorted.
pub fn encode_parameters(parameters: &BTreeMap<String, String>) -> String {
    serde_json::to_string(parameters).unwrap_or_else(|_| "{}".to_owned())
}

/// The merge patch that records a request. `resource_version` makes it conditional: a PV
/// changed since it was read answers 409 and the caller reads again.
pub fn record_patch(
    resource_version: Option<&str>,
    generation: u64,
    parameters: &BTreeMap<String, String>,
    by: Option<&str>,
) -> Value {
    json!({
        "metadata": {
            "resourceVersion": resource_version,
            "annotations": {
                keys::DESIRED_PARAMETERS: encode_parameters(parameters),
                keys::DESIRED_GENERATION: generation.to_string(),
                keys::DESIRED_BY: by,
            }
        }
    })
}

/// The node's acknowledgement of `generation`.
pub fn ack_patch(generation: u64) -> Value {
    json!({"metadata": {"annotations": {
        keys::APPLIED_GENERATION: generation.to_string(),
        keys::REFUSED_GENERATION: null,
    }}})
}

/// The node's refusal of `generation`, with the reason.
pub fn refuse_patch(generation: u64, reason: &str) -> Value {
    json!({"metadata": {"annotations": {
        keys::REFUSED_GENERATION: format!("{generation}: {reason}"),
    }}})
}

/// Where a waiting ControllerModifyVolume stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Not applied yet; wait for this generation (a later request for the same
    /// parameters moves it up).
    Waiting(u64),
    /// The node applied it (or a later generation of the same parameters).
    Applied,
    /// The node refused it, saying why.
    Refused(String),
    /// A request for other parameters replaced it.
    Superseded,
}

/// What `state` means for a request for `parameters` recorded as `generation`.
pub fn progress(
    state: &PvState,
    generation: u64,
    parameters: &BTreeMap<String, String>,
) -> Progress {
    let Some(d) = &state.desired else {
        // The record was removed by someone: treat it as replaced.
        return Progress::Superseded;
    };
    if &d.parameters != parameters {
        return Progress::Superseded;
    }
    let target = generation.max(d.generation);
    if state.applied >= target {
        return Progress::Applied;
    }
    match &state.refused {
        Some((g, why)) if *g == target => Progress::Refused(why.clone()),
        _ => Progress::Waiting(target),
    }
}
