//! Per-volume guard: a second call on a volume whose call is still running gets ABORTED
//! instead of racing it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use crate::error::{Error, Result};

/// The set of volume keys with a call in flight.
#[derive(Debug, Default, Clone)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Held for the duration of one call; releases its key when dropped.
#[derive(Debug)]
pub struct Guard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `key`, or fails with [`Error::InFlight`] if another call holds it.
    pub fn claim(&self, key: &str) -> Result<Guard> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if !keys.insert(key.to_owned()) {
            return Err(Error::InFlight(key.to_owned()));
        }
        Ok(Guard {
            keys: Arc::clone(&self.keys),
            key: key.to_owned(),
        })
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_claim_is_refused_until_release() {
        let f = InFlight::default();
        let g = f.claim("v1").unwrap();
        assert!(matches!(f.claim("v1"), Err(Error::InFlight(_))));
        assert!(f.claim("v2").is_ok());
        drop(g);
        assert!(f.claim("v1").is_ok());
    }
}
