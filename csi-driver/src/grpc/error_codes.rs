//! The one place where domain errors become CSI status codes: the single
//! `From<Error> for tonic::Status`, one code per variant, no wildcard arm.

use std::error::Error as _;

use tonic::{Code, Status};

use crate::error::Error;
use crate::os;

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = code_of(&e);
        Status::new(code, chain(&e))
    }
}

/// The one CSI status code of each domain error.
pub fn code_of(e: &Error) -> Code {
    match e {
        Error::InvalidArgument { .. } | Error::Unsupported(_) => Code::InvalidArgument,
        Error::VolumeNotFound(_) | Error::SnapshotNotFound(_) | Error::PathNotFound { .. } => {
            Code::NotFound
        }
        Error::AlreadyExists(_) => Code::AlreadyExists,
        Error::ResourceExhausted(_) => Code::ResourceExhausted,
        Error::InFlight(_) | Error::BadToken(_) | Error::Raced(_) => Code::Aborted,
        Error::FailedPrecondition(_) => Code::FailedPrecondition,
        Error::OutOfRange(_) => Code::OutOfRange,
        Error::NotReady(_) => Code::Unavailable,
        Error::Os(os) => match os {
            os::Error::Timeout { .. } => Code::DeadlineExceeded,
            os::Error::CommandFailed { .. }
            | os::Error::Spawn { .. }
            | os::Error::Io { .. }
            | os::Error::Parse { .. } => Code::Internal,
        },
        Error::Metadata { .. } => Code::Internal,
    }
}

/// The error and its sources, joined with `: `.
fn chain(e: &Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let part = s.to_string();
        if !msg.contains(&part) {
            msg.push_str(": ");
            msg.push_str(&part);
        }
        src = s.source();
    }
    msg
}

/// Codes that mean the caller asked for something wrong or not yet possible, as opposed
/// to the driver failing; they are logged at a lower level.
pub fn is_caller_error(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        let cases: Vec<(Error, Code)> = vec![
            (
                Error::invalid("name", "must not be empty"),
                Code::InvalidArgument,
            ),
            (Error::VolumeNotFound("v".into()), Code::NotFound),
            (Error::SnapshotNotFound("s".into()), Code::NotFound),
            (Error::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                Error::ResourceExhausted("x".into()),
                Code::ResourceExhausted,
            ),
            (Error::InFlight("v".into()), Code::Aborted),
            (Error::BadToken("t".into()), Code::Aborted),
            (Error::Raced("r".into()), Code::Aborted),
            (Error::OutOfRange("x".into()), Code::OutOfRange),
            (Error::NotReady("x".into()), Code::Unavailable),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn message_carries_the_cause_chain() {
        let e = Error::from(os::Error::io(
            "read",
            std::path::Path::new("/x"),
            std::io::Error::other("disk on fire"),
        ));
        let s = Status::from(e);
        assert_eq!(s.code(), Code::Internal);
        assert_eq!(s.message(), "read /x: disk on fire");
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let s = Status::from(Error::invalid(
            "volume_capability.access_mode",
            "must be given",
        ));
        assert_eq!(s.message(), "volume_capability.access_mode: must be given");
    }
}
