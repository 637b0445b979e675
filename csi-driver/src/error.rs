//! The domain error: every failure a CSI call can end in, independent of gRPC.
//!
//! `grpc::error_codes` maps each variant to one CSI status code; nothing else decides codes.

use crate::os;

/// A domain failure. Messages are lowercase, carry the field or object they are about,
/// and never end with a period.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or malformed; `field` names it as the spec does.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// The volume ID is well formed but no such volume exists on this node.
    #[error("volume {0} not found")]
    VolumeNotFound(String),
    /// The snapshot ID is well formed but no such snapshot exists on this node.
    #[error("snapshot {0} not found")]
    SnapshotNotFound(String),
    /// A path the request names does not exist.
    #[error("{field} {path} does not exist")]
    PathNotFound { field: &'static str, path: String },
    /// The volume exists but is incompatible with the request (size, capabilities, mount).
    #[error("{0}")]
    AlreadyExists(String),
    /// Out of space, or past the overprovision ratio, or no room in the requested topology.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another call on the same volume is still in flight.
    #[error("an operation on {0} is already in progress")]
    InFlight(String),
    /// What the call relied on changed under it (a device released while the call ran);
    /// a retry starts over and can succeed.
    #[error("{0}; retry")]
    Raced(String),
    /// The volume is not in the state the call needs (not staged, in use, ...).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A size outside what the backend or filesystem can provide.
    #[error("{0}")]
    OutOfRange(String),
    /// The requested operation or option is not supported by this driver.
    #[error("{0}")]
    Unsupported(String),
    /// The storage the call needs is not set up (e.g. a device class whose pool could not
    /// be created or adopted at start-up); retrying after the operator fixes it may work.
    #[error("{0}")]
    NotReady(String),
    /// A ListVolumes or ListSnapshots starting token this driver did not issue.
    #[error("starting_token {0:?} was not issued by this driver")]
    BadToken(String),
    /// An OS effect failed (command, mount, file).
    #[error(transparent)]
    Os(#[from] os::Error),
    /// Stored volume metadata could not be read or written.
    #[error("volume metadata {path}: {reason}")]
    Metadata { path: String, reason: String },
}

impl Error {
    /// Shorthand for an invalid field.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A tier resolution error is INVALID_ARGUMENT naming its key.
impl From<iops_controller::ResolveError> for Error {
    fn from(e: iops_controller::ResolveError) -> Self {
        let field = e.field().to_owned();
        let text = e.to_string();
        let reason = text
            .strip_prefix(&format!("{field}: "))
            .map_or_else(|| text.clone(), str::to_owned);
        Error::InvalidArgument { field, reason }
    }
}

/// Result with the domain error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
