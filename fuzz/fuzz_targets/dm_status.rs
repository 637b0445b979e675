//! Device-mapper status: the `DM_TABLE_STATUS` ioctl reply (binary, laid out by the kernel)
//! and the thin-pool status line in it, which the lvm backend reads for a pool's usage. No
//! panic; a reply rebuilt from the targets it accepts, in the kernel's layout, reads back
//! the same; a thin-pool line it accepts keeps used <= total, and printed back in the
//! kernel's format parses to the same status.
//!
//! The input's first byte picks the parser: even, the reply; odd, the status line.
#![no_main]

use csi_driver::os::dm::{self, PoolMode, TargetStatus};
use libfuzzer_sys::fuzz_target;

/// `sizeof(struct dm_ioctl)` and `sizeof(struct dm_target_spec)` (include/uapi/linux/dm-ioctl.h).
const HEADER_LEN: usize = 312;
const SPEC_LEN: usize = 40;

fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    buf[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

/// A reply as `retrieve_status` (drivers/md/dm-ioctl.c) lays it out: header, then each
/// target's spec and NUL-terminated status line, `next` 8-byte aligned from `data_start`.
fn reply(targets: &[TargetStatus]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; HEADER_LEN];
    put_u32(&mut buf, 16, u32::try_from(HEADER_LEN).ok()?);
    put_u32(&mut buf, 20, u32::try_from(targets.len()).ok()?);
    for t in targets {
        // The kernel's type field is 16 bytes with a NUL; a status line has no NUL.
        if t.target_type.len() >= 16 || t.target_type.contains('\0') || t.status.contains('\0') {
            return None;
        }
        let spec = buf.len();
        buf.resize(spec + SPEC_LEN, 0);
        buf[spec + 24..spec + 24 + t.target_type.len()].copy_from_slice(t.target_type.as_bytes());
        buf.extend_from_slice(t.status.as_bytes());
        buf.push(0);
        buf.resize(buf.len().next_multiple_of(8), 0);
        let next = u32::try_from(buf.len() - HEADER_LEN).ok()?;
        put_u32(&mut buf, spec + 20, next);
    }
    let size = u32::try_from(buf.len()).ok()?;
    put_u32(&mut buf, 12, size);
    Some(buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    if pick % 2 == 0 {
        let Ok(targets) = csi_driver::fuzzing::dm_status_reply(rest) else {
            return;
        };
        if let Some(buf) = reply(&targets) {
            let back = csi_driver::fuzzing::dm_status_reply(&buf)
                .unwrap_or_else(|e| panic!("rebuilt reply of {targets:?} does not read: {e}"));
            assert_eq!(back, targets);
        }
        for t in &targets {
            if t.target_type == "thin-pool" {
                let _ = dm::parse_thin_pool_status(&t.status);
            }
        }
        return;
    }
    let Ok(line) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(s) = dm::parse_thin_pool_status(line) else {
        return;
    };
    assert!(s.used_data_blocks <= s.total_data_blocks);
    assert!(s.used_metadata_blocks <= s.total_metadata_blocks);
    let (d, m) = (s.data_percent(), s.metadata_percent());
    assert!(
        (0.0..=100.0).contains(&d) && (0.0..=100.0).contains(&m),
        "{d} {m}"
    );
    let mode = match s.mode {
        PoolMode::Rw => "rw",
        PoolMode::Ro => "ro",
        PoolMode::OutOfDataSpace => "out_of_data_space",
    };
    let printed = format!(
        "{} {}/{} {}/{} - {mode} discard_passdown queue_if_no_space {} 1024",
        s.transaction_id,
        s.used_metadata_blocks,
        s.total_metadata_blocks,
        s.used_data_blocks,
        s.total_data_blocks,
        if s.needs_check { "needs_check" } else { "-" },
    );
    let back = dm::parse_thin_pool_status(&printed)
        .unwrap_or_else(|e| panic!("printed status {printed:?} does not parse: {e}"));
    assert_eq!(back, s, "round trip of {printed:?}");
});
