//! The snapshot calls of the controller side: CreateSnapshot, DeleteSnapshot and
//! ListSnapshots, on a backend that has snapshots ([`Backend::snapshots`]).
//!
//! [`Backend::snapshots`]: crate::backend::Backend::snapshots

use std::collections::BTreeMap;

use super::Driver;
use crate::backend::CreatedSnapshot;
use crate::error::{Error, Result};
use crate::validate;
use crate::volume::{SNAPSHOT_PREFIX, Snapshot, SnapshotSpec, snapshot_id_for};

/// Prefix of the ListSnapshots tokens this driver issues; anything else is refused.
const TOKEN_PREFIX: &str = "after:";
/// The parameter prefix reserved for the CO (csi-snapshotter's `--extra-create-metadata`).
const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

/// One ListSnapshots page.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    /// The snapshots, in ID order.
    pub snapshots: Vec<Snapshot>,
    /// The token that continues after the last of them; `None` on the last page.
    pub next_token: Option<String>,
}

/// What ListSnapshots filters on.
#[derive(Debug, Clone, Default)]
pub struct SnapshotFilter<'a> {
    pub snapshot_id: &'a str,
    pub source_volume_id: &'a str,
}

impl Driver {
    /// Whether the backend takes snapshots (the controller's capabilities say so).
    pub fn snapshots(&self) -> bool {
        self.backend.snapshots()
    }

    fn no_snapshots(&self) -> Error {
        Error::Unsupported(format!(
            "the {} backend has no snapshots (use a device class of the lvm backend)",
            self.backend.kind()
        ))
    }

    /// Takes a snapshot of `source` named `name`; idempotent by name.
    #[tracing::instrument(skip(self, parameters))]
    pub async fn create_snapshot(
        &self,
        name: &str,
        source: &str,
        parameters: &BTreeMap<String, String>,
    ) -> Result<Snapshot> {
        validate::volume_name(name)?;
        validate::volume_id("source_volume_id", source)?;
        if let Some(k) = parameters.keys().find(|k| !k.starts_with(RESERVED_PREFIX)) {
            return Err(Error::invalid(
                format!("parameters[{k:?}]"),
                "is not a snapshot parameter iolane knows (it takes none)",
            ));
        }
        if !self.backend.snapshots() {
            return Err(self.no_snapshots());
        }
        let id = snapshot_id_for(name);
        let _guard = self.inflight.claim(&id)?;
        let spec = SnapshotSpec {
            id,
            name: name.to_owned(),
            source_volume_id: source.to_owned(),
            created_ns: now_ns(),
        };
        match self.backend.create_snapshot(&spec).await? {
            CreatedSnapshot::New(s) => {
                tracing::info!(snapshot.id = %s.id, volume.id = %source, size = s.size_bytes, "created snapshot");
                Ok(s)
            }
            CreatedSnapshot::Existing(s) => {
                if s.name != spec.name {
                    return Err(Error::AlreadyExists(format!(
                        "snapshot id {} is taken by another name (hash collision)",
                        spec.id
                    )));
                }
                if s.source_volume_id != spec.source_volume_id {
                    return Err(Error::AlreadyExists(format!(
                        "snapshot {name:?} already exists, of volume {}",
                        s.source_volume_id
                    )));
                }
                Ok(s)
            }
        }
    }

    /// Deletes a snapshot; a missing one is not an error.
    #[tracing::instrument(skip(self))]
    pub async fn delete_snapshot(&self, id: &str) -> Result<()> {
        validate::volume_id("snapshot_id", id)?;
        if !self.backend.snapshots() {
            return Err(self.no_snapshots());
        }
        if !id.starts_with(SNAPSHOT_PREFIX) {
            tracing::debug!(snapshot.id = %id, "not a snapshot ID this driver issues: nothing to delete");
            return Ok(());
        }
        let _guard = self.inflight.claim(id)?;
        if self.backend.delete_snapshot(id).await? {
            tracing::info!(snapshot.id = %id, "deleted snapshot");
        } else {
            tracing::debug!(snapshot.id = %id, "no such snapshot: nothing to delete");
        }
        Ok(())
    }

    /// One page of snapshots in ID order, filtered, and the token for the next page.
    pub async fn list_snapshots(
        &self,
        filter: SnapshotFilter<'_>,
        max_entries: i32,
        starting_token: &str,
    ) -> Result<SnapshotPage> {
        let max = usize::try_from(max_entries)
            .map_err(|_| Error::invalid("max_entries", "must not be negative"))?;
        let after = if starting_token.is_empty() {
            None
        } else {
            let id = starting_token
                .strip_prefix(TOKEN_PREFIX)
                .filter(|id| validate::volume_id("starting_token", id).is_ok())
                .ok_or_else(|| Error::BadToken(starting_token.to_owned()))?;
            Some(id.to_owned())
        };
        if !self.backend.snapshots() {
            return Err(self.no_snapshots());
        }
        let mut all = self.backend.list_snapshots().await?;
        all.sort_by(|a, b| a.id.cmp(&b.id));
        // Keyed on the last ID returned, so deleting snapshots between pages skips nothing
        // and never repeats an entry.
        let mut page: Vec<Snapshot> = all
            .into_iter()
            .filter(|s| filter.snapshot_id.is_empty() || s.id == filter.snapshot_id)
            .filter(|s| {
                filter.source_volume_id.is_empty() || s.source_volume_id == filter.source_volume_id
            })
            .filter(|s| after.as_ref().is_none_or(|a| s.id.as_str() > a.as_str()))
            .collect();
        let mut next = None;
        if max > 0 && page.len() > max {
            page.truncate(max);
            next = page.last().map(|s| format!("{TOKEN_PREFIX}{}", s.id));
        }
        Ok(SnapshotPage {
            snapshots: page,
            next_token: next,
        })
    }
}

/// Now, in nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}
