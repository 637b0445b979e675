//! Block device numbers: `dev_t` split and joined with nix's `major`/`minor`/`makedev`
//! (glibc's layout), and the `MAJ:MIN` text form of `io.max`, `io.stat` and sysfs.

use std::fmt;
use std::str::FromStr;

/// A Linux block device number, split the way the kernel splits `dev_t`.
///
/// `io.max` lines are keyed `MAJ:MIN`; computing that as `rdev / 256` breaks once minors
/// pass 255, so the split here is glibc's `major()`/`minor()` (through nix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    /// Splits a `st_rdev`/`st_dev` value.
    pub fn from_rdev(rdev: u64) -> Self {
        let major = nix::sys::stat::major(rdev);
        let minor = nix::sys::stat::minor(rdev);
        DeviceNumber {
            major: u32::try_from(major).unwrap_or(u32::MAX),
            minor: u32::try_from(minor).unwrap_or(u32::MAX),
        }
    }

    /// Joins major and minor back into a `dev_t`.
    pub fn to_rdev(self) -> u64 {
        nix::sys::stat::makedev(u64::from(self.major), u64::from(self.minor))
    }
}

impl fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// A `MAJ:MIN` string that is not two decimal numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a device number (MAJ:MIN, both decimal)")]
pub struct DeviceNumberError(pub String);

impl FromStr for DeviceNumber {
    type Err = DeviceNumberError;

    /// Parses `MAJ:MIN` as the kernel prints it in `io.max`, `io.stat` and
    /// `/sys/block/*/dev`: two decimal numbers, nothing else.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceNumberError(s.to_owned());
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        Ok(DeviceNumber {
            major: decimal_u32(major).ok_or_else(bad)?,
            minor: decimal_u32(minor).ok_or_else(bad)?,
        })
    }
}

/// Digits only: `u32::from_str` would also take a leading `+`.
fn decimal_u32(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maj_min() {
        let ok = [
            ("7:3", (7, 3)),
            ("254:256", (254, 256)),
            ("259:1048575", (259, 1_048_575)),
        ];
        for (text, (major, minor)) in ok {
            assert_eq!(text.parse(), Ok(DeviceNumber { major, minor }), "{text}");
            assert_eq!(DeviceNumber { major, minor }.to_string(), text);
        }
        for bad in [
            "",
            "7",
            "7:",
            ":3",
            "7:3:1",
            "+7:3",
            "7:-3",
            " 7:3",
            "7 :3",
            "a:b",
            "4294967296:0",
        ] {
            assert_eq!(
                bad.parse::<DeviceNumber>(),
                Err(DeviceNumberError(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn small_numbers() {
        // /dev/loop3 is 7:3, rdev 0x703.
        assert_eq!(DeviceNumber::from_rdev(0x703).to_string(), "7:3");
    }

    #[test]
    fn minors_past_255_do_not_leak_into_major() {
        // loop300 = 7:300; dm-256 = 254:256. rdev / 256 would give majors 8 and 255.
        for (ma, mi) in [
            (7u32, 300u32),
            (254, 256),
            (259, 1_048_575),
            (4095, 0),
            (0x12345, 0x6789a),
        ] {
            let d = DeviceNumber {
                major: ma,
                minor: mi,
            };
            assert_eq!(DeviceNumber::from_rdev(d.to_rdev()), d, "{ma}:{mi}");
        }
        assert_eq!(
            DeviceNumber::from_rdev(
                DeviceNumber {
                    major: 7,
                    minor: 300
                }
                .to_rdev()
            )
            .to_string(),
            "7:300"
        );
    }

    #[test]
    fn matches_libc_layout() {
        for (ma, mi) in [(7u32, 3u32), (254, 256), (259, 70_000), (8, 0)] {
            let libc = nix::sys::stat::makedev(u64::from(ma), u64::from(mi));
            assert_eq!(
                DeviceNumber {
                    major: ma,
                    minor: mi
                }
                .to_rdev(),
                libc
            );
            assert_eq!(
                DeviceNumber::from_rdev(libc),
                DeviceNumber {
                    major: ma,
                    minor: mi
                }
            );
        }
        assert_eq!(
            DeviceNumber {
                major: 254,
                minor: 256
            }
            .to_rdev(),
            0x10_fe00
        );
    }
}
