//! The data written through volumes and read back: reproducible patterns and their
//! SHA-256, buffered and O_DIRECT reads and writes, block device sizes.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

/// `len` pseudo-random bytes from `seed` (splitmix64): reproducible, incompressible.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// SHA-256 of `data`, hex.
pub fn sha256(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `data` at the start of `path` (a file, created if needed, or a block device)
/// and fsyncs it.
pub fn write_synced(path: &Path, data: &[u8]) -> std::io::Result<()> {
    // No truncation: the path may be a block device.
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(data)?;
    f.sync_all()
}

/// Reads `len` bytes from the start of `path`.
pub fn read_prefix(path: &Path, len: usize) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(path)?;
    let mut buf = vec![0; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

/// Size in bytes of the block device at `path` (through a bind mount too).
pub fn block_device_size(path: &Path) -> u64 {
    let mut f = File::open(path).expect("open block device");
    f.seek(SeekFrom::End(0))
        .expect("seek to end of block device")
}

/// Alignment O_DIRECT needs for buffers, offsets and lengths (logical block size or more).
pub const DIRECT_ALIGN: usize = 4096;

/// A zeroed buffer of `len` bytes aligned for O_DIRECT (no `unsafe`: an aligned window of
/// a larger vector).
#[derive(Debug)]
pub struct AlignedBuf {
    raw: Vec<u8>,
    off: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + DIRECT_ALIGN];
        let off = raw.as_ptr().align_offset(DIRECT_ALIGN);
        assert!(off < DIRECT_ALIGN, "cannot align a buffer");
        AlignedBuf { raw, off, len }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.off..self.off + self.len]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.off..self.off + self.len]
    }
}

/// Opens `path` with O_DIRECT (page cache bypassed: reads see the device, writes reach it).
pub fn open_direct(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(nix::libc::O_DIRECT)
        .open(path)
}

/// Reads `len` bytes at `offset` of `path` with O_DIRECT (both multiples of
/// [`DIRECT_ALIGN`]).
pub fn read_direct(path: &Path, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let f = open_direct(path, false)?;
    let mut buf = AlignedBuf::new(len);
    f.read_exact_at(buf.as_mut_slice(), offset)?;
    Ok(buf.as_slice().to_vec())
}

/// Writes `data` at `offset` of `path` with O_DIRECT and fsyncs (length and offset
/// multiples of [`DIRECT_ALIGN`]).
pub fn write_direct(path: &Path, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let f = open_direct(path, true)?;
    let mut buf = AlignedBuf::new(data.len());
    buf.as_mut_slice().copy_from_slice(data);
    f.write_all_at(buf.as_slice(), offset)?;
    f.sync_all()
}
