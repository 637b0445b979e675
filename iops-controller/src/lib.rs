//! iolane's IO side: device numbers now; tiers, cgroup discovery and `io.max` enforcement
//! as they land. Knows nothing of gRPC or CSI.

/// A Linux block device number, split the way the kernel splits `dev_t`.
///
/// `io.max` lines are keyed `MAJ:MIN`; computing that as `rdev / 256` breaks once minors
/// pass 255, so the split here follows glibc's `major()`/`minor()` bit layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceNumber {
    pub major: u32,
    pub minor: u32,
}

impl DeviceNumber {
    /// Splits a `st_rdev`/`st_dev` value.
    pub fn from_rdev(rdev: u64) -> Self {
        let major = ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0x0000_0fff);
        let minor = ((rdev >> 12) & 0xffff_ff00) | (rdev & 0x0000_00ff);
        DeviceNumber {
            major: u32::try_from(major).unwrap_or(u32::MAX),
            minor: u32::try_from(minor).unwrap_or(u32::MAX),
        }
    }

    /// Joins major and minor back into a `dev_t`.
    pub fn to_rdev(self) -> u64 {
        let (ma, mi) = (u64::from(self.major), u64::from(self.minor));
        ((ma & 0xffff_f000) << 32)
            | ((ma & 0x0000_0fff) << 8)
            | ((mi & 0xffff_ff00) << 12)
            | (mi & 0x0000_00ff)
    }
}

impl std::fmt::Display for DeviceNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
