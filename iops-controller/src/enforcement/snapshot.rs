//! What `/status` shows of one publication: typed, and serialised in the text forms
//! operators know (`MAJ:MIN`, the `io.max` body, the outcome's name).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cgroup::PodUid;
use crate::device::DeviceNumber;
use crate::iostat::IoStat;
use crate::reconcile::Outcome;
use crate::tier::Limits;

/// One publication of a volume to a pod, as of the last pass, with the caps and counters
/// read for the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicationSnapshot {
    /// kubelet's target path.
    pub target: PathBuf,
    #[serde(with = "text")]
    pub pod_uid: PodUid,
    /// The volume's device, `MAJ:MIN`, that the caps are keyed on.
    #[serde(with = "text")]
    pub device: DeviceNumber,
    /// The pod's cgroup, once found.
    pub cgroup: Option<PathBuf>,
    /// The caps in the pod's `io.max` now (`rbps=.. wbps=.. riops=.. wiops=..`).
    #[serde(default, with = "text::limits")]
    pub io_max: Option<Limits>,
    /// The last pass's outcome (`InSync`, `Applied`, `Pending(NoCgroup)`, ...).
    #[serde(with = "text")]
    pub outcome: Outcome,
    /// The pod's `io.stat` counters for the device, read for this snapshot.
    pub stats: Option<Counters>,
}

/// `io.stat` counters of one device in one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub rios: u64,
    pub wios: u64,
    pub rbytes: u64,
    pub wbytes: u64,
}

impl From<IoStat> for Counters {
    fn from(s: IoStat) -> Counters {
        Counters {
            rios: s.rios,
            wios: s.wios,
            rbytes: s.rbytes,
            wbytes: s.wbytes,
        }
    }
}

/// Serde through a value's text form (`Display` out, `FromStr` in), for
/// `#[serde(with = "text")]`.
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr,
        T::Err: Display,
        D: Deserializer<'de>,
    {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }

    /// Optional [`Limits`](crate::tier::Limits) as an `io.max` line's body, or `null`.
    pub mod limits {
        use serde::{Deserialize, Deserializer, Serializer};

        use crate::tier::Limits;

        pub fn serialize<S: Serializer>(value: &Option<Limits>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(l) => s.collect_str(l),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Limits>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|body| body.parse().map_err(serde::de::Error::custom))
                .transpose()
        }
    }
}
