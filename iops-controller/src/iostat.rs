//! cgroup v2 `io.stat`: per-device IO counters of a cgroup and its descendants.
//!
//! Format: one line per device that has seen IO,
//! `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`, counters since the
//! cgroup was created. Kernels before 4.19 have no `dbytes`/`dios`; iocost, io.latency and
//! the blkcg debug option append keys such as `cost.vrate=100.00` or `use_delay=0`, which
//! are ignored.

use std::collections::BTreeMap;

use crate::device::DeviceNumber;

/// The counters of one device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IoStat {
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
    pub dbytes: u64,
    pub dios: u64,
}

/// An `io.stat` line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("io.stat line {line:?}: {reason}")]
pub struct IoStatError {
    pub line: String,
    pub reason: String,
}

/// The parsed contents of one cgroup's `io.stat`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoStats {
    devices: BTreeMap<DeviceNumber, IoStat>,
}

impl IoStats {
    /// Parses a whole `io.stat` file. Counters a line leaves out are 0.
    pub fn parse(text: &str) -> Result<IoStats, IoStatError> {
        let mut devices = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let err = |reason: String| IoStatError {
                line: line.to_owned(),
                reason,
            };
            let mut tokens = line.split_whitespace();
            let dev: DeviceNumber = tokens
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|e: crate::device::DeviceNumberError| err(e.to_string()))?;
            let mut stat = IoStat::default();
            for token in tokens {
                let (key, value) = token
                    .split_once('=')
                    .ok_or_else(|| err(format!("{token:?} is not key=value")))?;
                let slot = match key {
                    "rbytes" => &mut stat.rbytes,
                    "wbytes" => &mut stat.wbytes,
                    "rios" => &mut stat.rios,
                    "wios" => &mut stat.wios,
                    "dbytes" => &mut stat.dbytes,
                    "dios" => &mut stat.dios,
                    _ => continue,
                };
                *slot = decimal_u64(value)
                    .ok_or_else(|| err(format!("{key}={value:?} is not a counter")))?;
            }
            if devices.insert(dev, stat).is_some() {
                return Err(err(format!("device {dev} appears twice")));
            }
        }
        Ok(IoStats { devices })
    }

    /// The counters of `dev`; `None` when the cgroup has done no IO on it.
    pub fn get(&self, dev: DeviceNumber) -> Option<&IoStat> {
        self.devices.get(&dev)
    }

    /// Every device listed, in device order.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceNumber, &IoStat)> {
        self.devices.iter().map(|(d, s)| (*d, s))
    }
}

fn decimal_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(major: u32, minor: u32) -> DeviceNumber {
        DeviceNumber { major, minor }
    }

    /// Captured from Linux 6.1 by tests/fixtures/capture.sh: 259:0 is an NVMe disk, 7:0
    /// and 7:1 loop devices; `io.stat.iocost` after iocost was enabled on 259:0.
    #[test]
    fn captured() {
        let stat = |rbytes, wbytes, rios, wios, dbytes, dios| IoStat {
            rbytes,
            wbytes,
            rios,
            wios,
            dbytes,
            dios,
        };
        let table = [
            (
                include_str!("../tests/fixtures/io.stat"),
                stat(40_960, 0, 10, 0, 0, 0),
            ),
            (
                include_str!("../tests/fixtures/io.stat.iocost"),
                stat(81_920, 0, 20, 0, 0, 0),
            ),
        ];
        for (text, disk) in table {
            let stats = IoStats::parse(text).unwrap();
            assert_eq!(stats.get(dev(259, 0)), Some(&disk));
            // 8 MiB written with 1 MiB direct writes, 1 MiB read with 4 KiB reads.
            assert_eq!(
                stats.get(dev(7, 0)),
                Some(&stat(1_048_576, 8_388_608, 256, 8, 0, 0))
            );
            // 1 MiB written, then discarded.
            assert_eq!(
                stats.get(dev(7, 1)),
                Some(&stat(1_069_056, 1_048_576, 48, 16, 1_048_576, 1))
            );
            assert_eq!(
                stats.devices().map(|(d, _)| d).collect::<Vec<_>>(),
                [dev(7, 0), dev(7, 1), dev(259, 0)]
            );
        }
    }

    #[test]
    fn lines() {
        let table = [
            (
                "8:16 rbytes=1459200 wbytes=314773504 rios=192 wios=353 dbytes=0 dios=0",
                dev(8, 16),
                IoStat {
                    rbytes: 1_459_200,
                    wbytes: 314_773_504,
                    rios: 192,
                    wios: 353,
                    dbytes: 0,
                    dios: 0,
                },
            ),
            // Pre-4.19: no discard counters.
            (
                "259:0 rbytes=4096 wbytes=0 rios=1 wios=0",
                dev(259, 0),
                IoStat {
                    rbytes: 4096,
                    rios: 1,
                    ..IoStat::default()
                },
            ),
            // iocost and io.latency keys are not counters of ours.
            (
                "253:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=5 dios=6 cost.vrate=100.00 \
                 cost.usage=123 cost.wait=0 cost.indebt=0 cost.indelay=0 use_delay=0 \
                 delay_nsec=0",
                dev(253, 0),
                IoStat {
                    rbytes: 1,
                    wbytes: 2,
                    rios: 3,
                    wios: 4,
                    dbytes: 5,
                    dios: 6,
                },
            ),
            (
                "7:0 rbytes=18446744073709551615",
                dev(7, 0),
                IoStat {
                    rbytes: u64::MAX,
                    ..IoStat::default()
                },
            ),
        ];
        for (line, d, want) in table {
            let stats = IoStats::parse(line).unwrap();
            assert_eq!(stats.get(d), Some(&want), "{line}");
            assert_eq!(stats.devices().count(), 1);
        }
        for (text, reason) in [
            (
                "x rbytes=1",
                "\"x\" is not a device number (MAJ:MIN, both decimal)",
            ),
            ("8:0 rbytes", "\"rbytes\" is not key=value"),
            ("8:0 rbytes=-1", "rbytes=\"-1\" is not a counter"),
            ("8:0 wios=1.5", "wios=\"1.5\" is not a counter"),
            ("8:0 rios=max", "rios=\"max\" is not a counter"),
        ] {
            assert_eq!(
                IoStats::parse(text),
                Err(IoStatError {
                    line: text.to_owned(),
                    reason: reason.to_owned()
                }),
                "{text}"
            );
        }
        assert_eq!(
            IoStats::parse("8:0 rios=1\n8:0 rios=2").map_err(|e| e.to_string()),
            Err("io.stat line \"8:0 rios=2\": device 8:0 appears twice".to_owned())
        );
        assert_eq!(IoStats::parse(""), Ok(IoStats::default()));
        assert_eq!(IoStats::default().get(dev(8, 0)), None);
    }
}
