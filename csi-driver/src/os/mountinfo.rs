//! Parser for `/proc/<pid>/mountinfo` (see proc(5)).

use std::path::{Path, PathBuf};

use super::{Error, Result};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u32,
    pub parent_id: u32,
    /// Device number of the mounted filesystem (`st_dev` of files on it).
    pub major: u32,
    pub minor: u32,
    /// Path inside the source filesystem that is mounted here (bind mounts).
    pub root: PathBuf,
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
    pub super_options: String,
}

impl MountEntry {
    /// Whether the per-mount options include `ro`.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Parses a whole mountinfo file.
pub fn parse(text: &str) -> Result<Vec<MountEntry>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(parse_line)
        .collect()
}

/// The topmost (last) entry mounted at exactly `path`: only that line is parsed, so a
/// look-up in a table of thousands of mounts costs a scan, not a parse of each line.
pub fn topmost_at(text: &str, path: &Path) -> Result<Option<MountEntry>> {
    for line in text.lines().rev() {
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let here = if field.contains('\\') {
            Path::new(&unescape(field)) == path
        } else {
            Path::new(field) == path
        };
        if here {
            return parse_line(line).map(Some);
        }
    }
    Ok(None)
}

fn parse_line(line: &str) -> Result<MountEntry> {
    let bad = || Error::Parse {
        what: "mountinfo line",
        output: line.to_owned(),
    };
    let (left, right) = line.split_once(" - ").ok_or_else(bad)?;
    let mut l = left.split(' ');
    let mount_id = l.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let parent_id = l.next().and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let (major, minor) = l
        .next()
        .and_then(|s| s.split_once(':'))
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(bad)?;
    let root = PathBuf::from(unescape(l.next().ok_or_else(bad)?));
    let mount_point = PathBuf::from(unescape(l.next().ok_or_else(bad)?));
    let options = l.next().ok_or_else(bad)?.to_owned();
    let mut r = right.split(' ');
    let fs_type = r.next().ok_or_else(bad)?.to_owned();
    let source = unescape(r.next().ok_or_else(bad)?);
    let super_options = r.next().unwrap_or_default().to_owned();
    Ok(MountEntry {
        mount_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        options,
        fs_type,
        source,
        super_options,
    })
}

/// Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`): a
/// backslash and three octal digits of one byte (at most `\377`); anything else is kept
/// as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && (b'0'..=b'3').contains(&b[i + 1])
            && b[i + 2..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a host with a staged loop volume, a bind publish and a raw block bind.
    const SAMPLE: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
25 22 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=12262396k,nr_inodes=3065599,mode=755
310 22 7:3 / /tmp/sanity/staging rw,relatime shared:170 - ext4 /dev/loop3 rw
320 22 7:3 / /tmp/sanity/with\\040space rw,relatime shared:170 - ext4 /dev/loop3 rw
330 22 0:5 /loop4 /tmp/sanity/block ro,relatime shared:2 - devtmpfs udev rw,size=12262396k,mode=755
";

    /// Found by the `mountinfo` fuzz target: `\\400` and above are no byte; unescaping
    /// them overflowed (a panic in debug builds, a wrong path in release).
    #[test]
    fn escapes_past_one_byte_are_kept_as_written() {
        let m = parse("1 2 7:3 / /a\\400b\\777\\040c rw - ext4 /dev/loop3 rw\n").unwrap();
        assert_eq!(m[0].mount_point, PathBuf::from("/a\\400b\\777 c"));
    }

    /// An escape that ends a field is decoded; one cut short by the field's end is kept.
    #[test]
    fn escapes_at_the_end_of_a_field() {
        assert_eq!(unescape("/a\\040"), "/a ");
        assert_eq!(unescape("\\011"), "\t");
        assert_eq!(unescape("/a\\04"), "/a\\04");
        assert_eq!(unescape("/a\\"), "/a\\");
        let m = parse("1 2 7:3 / /a\\040 rw - ext4 /dev/loop\\0403 rw\n").unwrap();
        assert_eq!(m[0].mount_point, PathBuf::from("/a "));
        assert_eq!(m[0].source, "/dev/loop 3");
    }

    #[test]
    fn topmost_at_finds_the_last_mount_at_a_path() {
        let staging = Path::new("/tmp/sanity/staging");
        let stacked =
            format!("{SAMPLE}340 310 7:4 / /tmp/sanity/staging rw - ext4 /dev/loop4 rw\n");
        let m = topmost_at(&stacked, staging).unwrap().unwrap();
        assert_eq!((m.mount_id, m.source.as_str()), (340, "/dev/loop4"));
        let spaced = topmost_at(SAMPLE, Path::new("/tmp/sanity/with space")).unwrap();
        assert_eq!(spaced.unwrap().mount_id, 320);
        assert_eq!(topmost_at(SAMPLE, Path::new("/tmp/sanity")).unwrap(), None);
        let all = parse(SAMPLE).unwrap();
        for m in &all {
            let top = all.iter().rev().find(|e| e.mount_point == m.mount_point);
            assert_eq!(topmost_at(SAMPLE, &m.mount_point).unwrap().as_ref(), top);
        }
    }

    #[test]
    fn parses_captured_sample() {
        let m = parse(SAMPLE).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!((m[2].major, m[2].minor), (7, 3));
        assert_eq!(m[2].mount_point, PathBuf::from("/tmp/sanity/staging"));
        assert_eq!(m[2].source, "/dev/loop3");
        assert_eq!(m[3].mount_point, PathBuf::from("/tmp/sanity/with space"));
        assert_eq!(m[4].root, PathBuf::from("/loop4"));
        assert!(m[4].read_only());
        assert!(!m[2].read_only());
        assert_eq!(m[0].super_options, "rw,errors=remount-ro");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("not a mountinfo line").is_err());
        assert!(parse("1 2 x:y / / rw - ext4 a b").is_err());
    }
}
