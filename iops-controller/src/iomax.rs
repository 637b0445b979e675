//! cgroup v2 `io.max`: parse what the kernel prints, render what iolane writes.
//!
//! Format (Documentation/admin-guide/cgroup-v2.rst, "io.max"; block/blk-throttle.c): one
//! line per device, `MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..`, each value a number or
//! `max`, lines in no particular order. Facts the code relies on:
//!
//! - Reading prints all four keys, but only for devices with at least one cap: a device
//!   whose four values are `max` has no line. A missing device therefore means
//!   [`Limits::UNLIMITED`], and writing the reset line makes the device's line disappear.
//! - Writing takes any subset of the keys in any order; keys not written keep their value.
//!   iolane always writes all four, so a line never inherits a stale cap.
//! - `0` is refused (ERANGE), and some kernels also refuse `1`; IOPS are kept in 32 bits,
//!   larger values are clamped to `u32::MAX`, which means no cap (see
//!   [`Limits::canonical`]).
//! - The root cgroup has no `io.max`.

use std::collections::BTreeMap;

use crate::device::DeviceNumber;
use crate::tier::{Limit, Limits, positive_decimal};

/// An `io.max` line that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("io.max line {line:?}: {reason}")]
pub struct IoMaxError {
    pub line: String,
    pub reason: String,
}

/// The parsed contents of one cgroup's `io.max`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IoMax {
    lines: BTreeMap<DeviceNumber, Limits>,
}

impl IoMax {
    /// Parses a whole `io.max` file. Unknown keys are ignored; a malformed line, a
    /// repeated key or a repeated device is an error.
    pub fn parse(text: &str) -> Result<IoMax, IoMaxError> {
        let mut lines = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (dev, limits) = parse_line(line)?;
            if lines.insert(dev, limits).is_some() {
                return Err(IoMaxError {
                    line: line.to_owned(),
                    reason: format!("device {dev} appears twice"),
                });
            }
        }
        Ok(IoMax { lines })
    }

    /// The caps on `dev`: [`Limits::UNLIMITED`] when the file has no line for it.
    pub fn limits(&self, dev: DeviceNumber) -> Limits {
        self.lines.get(&dev).copied().unwrap_or(Limits::UNLIMITED)
    }

    /// Every device with a line, in device order.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceNumber, &Limits)> {
        self.lines.iter().map(|(d, l)| (*d, l))
    }
}

/// Parses one line. Keys left out are `max` (as when writing).
pub fn parse_line(line: &str) -> Result<(DeviceNumber, Limits), IoMaxError> {
    let err = |reason: String| IoMaxError {
        line: line.to_owned(),
        reason,
    };
    let line = line.trim_start();
    let (dev, body) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
    if dev.is_empty() {
        return Err(err("empty line".to_owned()));
    }
    let dev: DeviceNumber = dev
        .parse()
        .map_err(|e: crate::device::DeviceNumberError| err(e.to_string()))?;
    let limits = parse_body(body).map_err(|e| err(e.reason))?;
    Ok((dev, limits.canonical()))
}

/// The caps of a line's body (`rbps=.. wbps=.. riops=.. wiops=..`, as [`Limits`] displays),
/// as written: keys left out are `max`, other keys are ignored.
fn parse_body(body: &str) -> Result<Limits, IoMaxError> {
    let err = |reason: String| IoMaxError {
        line: body.to_owned(),
        reason,
    };
    let mut values: [Option<Limit>; 4] = [None; 4];
    for token in body.split_whitespace() {
        let (key, value) = token
            .split_once('=')
            .ok_or_else(|| err(format!("{token:?} is not key=value")))?;
        let Some(i) = ["rbps", "wbps", "riops", "wiops"]
            .iter()
            .position(|k| *k == key)
        else {
            continue;
        };
        if values[i].is_some() {
            return Err(err(format!("{key} appears twice")));
        }
        // Not `Limit::from_str`: that refuses caps users must not set, which the kernel
        // may still print.
        let limit = match value {
            "max" => Some(Limit::Max),
            n => positive_decimal(n).map(Limit::Value),
        }
        .ok_or_else(|| {
            err(format!(
                "{key}={value:?} is neither a positive integer nor max"
            ))
        })?;
        values[i] = Some(limit);
    }
    let [read_bps, write_bps, read_iops, write_iops] = values.map(|v| v.unwrap_or(Limit::Max));
    Ok(Limits {
        read_bps,
        write_bps,
        read_iops,
        write_iops,
    })
}

impl std::str::FromStr for Limits {
    type Err = IoMaxError;

    /// The inverse of `Display`: an `io.max` line's body, kept as written (not
    /// [`canonical`](Limits::canonical)).
    fn from_str(body: &str) -> Result<Limits, IoMaxError> {
        parse_body(body)
    }
}

/// The line that sets all four caps of `dev`: `MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..`.
pub fn render_line(dev: DeviceNumber, limits: &Limits) -> String {
    format!("{dev} {limits}")
}

/// The line that lifts every cap of `dev`: `MAJ:MIN rbps=max wbps=max riops=max wiops=max`.
pub fn reset_line(dev: DeviceNumber) -> String {
    render_line(dev, &Limits::UNLIMITED)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Limit = Limit::Max;
    const fn n(v: u64) -> Limit {
        Limit::per_sec(v)
    }
    fn dev(major: u32, minor: u32) -> DeviceNumber {
        DeviceNumber { major, minor }
    }
    fn limits(rbps: Limit, wbps: Limit, riops: Limit, wiops: Limit) -> Limits {
        Limits {
            read_bps: rbps,
            write_bps: wbps,
            read_iops: riops,
            write_iops: wiops,
        }
    }

    #[test]
    fn lines() {
        let table = [
            (
                "8:16 rbps=2097152 wbps=max riops=max wiops=120",
                dev(8, 16),
                limits(n(2_097_152), MAX, MAX, n(120)),
            ),
            (
                "254:256 rbps=209715200 wbps=209715200 riops=2000 wiops=2000",
                dev(254, 256),
                limits(n(209_715_200), n(209_715_200), n(2000), n(2000)),
            ),
            // As written: any subset, any order, extra spaces.
            (
                "7:300  wiops=5   rbps=max",
                dev(7, 300),
                limits(MAX, MAX, MAX, n(5)),
            ),
            ("7:3", dev(7, 3), Limits::UNLIMITED),
            // Newer kernels take (and print) a cap of 1, which iolane never sets.
            ("7:3 wbps=1", dev(7, 3), limits(MAX, n(1), MAX, MAX)),
            // Unknown keys are ignored.
            (
                "7:3 riops=9 idle=200 latency=max",
                dev(7, 3),
                limits(MAX, MAX, n(9), MAX),
            ),
            // Canonical: 32-bit IOPS ceiling and u64::MAX bytes/s mean max.
            (
                "7:3 riops=4294967295 wiops=4294967294 rbps=18446744073709551615",
                dev(7, 3),
                limits(MAX, MAX, MAX, n(4_294_967_294)),
            ),
        ];
        for (line, d, l) in table {
            assert_eq!(parse_line(line), Ok((d, l)), "{line}");
        }
        for (line, reason) in [
            ("", "empty line"),
            (
                "8-16 rbps=1",
                "\"8-16\" is not a device number (MAJ:MIN, both decimal)",
            ),
            ("8:16 rbps", "\"rbps\" is not key=value"),
            (
                "8:16 rbps=0",
                "rbps=\"0\" is neither a positive integer nor max",
            ),
            (
                "8:16 wiops=-1",
                "wiops=\"-1\" is neither a positive integer nor max",
            ),
            (
                "8:16 riops=",
                "riops=\"\" is neither a positive integer nor max",
            ),
            (
                "8:16 riops=MAX",
                "riops=\"MAX\" is neither a positive integer nor max",
            ),
            ("8:16 riops=1 riops=2", "riops appears twice"),
        ] {
            assert_eq!(
                parse_line(line),
                Err(IoMaxError {
                    line: line.to_owned(),
                    reason: reason.to_owned()
                }),
                "{line:?}"
            );
        }
    }

    #[test]
    fn render() {
        let table = [
            (
                dev(254, 3),
                limits(n(209_715_200), n(209_715_200), n(2000), n(2000)),
                "254:3 rbps=209715200 wbps=209715200 riops=2000 wiops=2000",
            ),
            (
                dev(7, 300),
                limits(MAX, n(1), MAX, n(120)),
                "7:300 rbps=max wbps=1 riops=max wiops=120",
            ),
            (
                dev(259, 0),
                Limits::UNLIMITED,
                "259:0 rbps=max wbps=max riops=max wiops=max",
            ),
        ];
        for (d, l, line) in table {
            assert_eq!(render_line(d, &l), line);
            assert_eq!(parse_line(line), Ok((d, l)));
        }
        assert_eq!(
            reset_line(dev(254, 256)),
            "254:256 rbps=max wbps=max riops=max wiops=max"
        );
    }

    /// Captured from Linux 6.1 by tests/fixtures/capture.sh: 259:0 is an NVMe disk, 7:0
    /// and 7:1 loop devices.
    #[test]
    fn captured() {
        let fixture = |name| match name {
            "io.max" => include_str!("../tests/fixtures/io.max"),
            "io.max.after-reset" => include_str!("../tests/fixtures/io.max.after-reset"),
            "io.max.empty" => include_str!("../tests/fixtures/io.max.empty"),
            _ => unreachable!(),
        };
        let batch = limits(n(209_715_200), n(209_715_200), n(2000), n(2000));
        let nvme = limits(MAX, MAX, MAX, n(120));
        // (fixture, caps on 7:0, 7:1, 259:0)
        let table = [
            // 7:0 written with the batch line; 7:1 written all-max, then with IOPS at
            // u32::MAX and bytes/s at u64::MAX: no line; 259:0 written `wiops=120` alone.
            ("io.max", batch, Limits::UNLIMITED, nvme),
            // 7:0 then written with the reset line: its line is gone.
            (
                "io.max.after-reset",
                Limits::UNLIMITED,
                Limits::UNLIMITED,
                nvme,
            ),
            (
                "io.max.empty",
                Limits::UNLIMITED,
                Limits::UNLIMITED,
                Limits::UNLIMITED,
            ),
        ];
        for (name, loop0, loop1, disk) in table {
            let io = IoMax::parse(fixture(name)).unwrap();
            assert_eq!(io.limits(dev(7, 0)), loop0, "{name}");
            assert_eq!(io.limits(dev(7, 1)), loop1, "{name}");
            assert_eq!(io.limits(dev(259, 0)), disk, "{name}");
            // What iolane renders is what the kernel prints.
            for line in fixture(name).lines() {
                let (d, l) = parse_line(line).unwrap();
                assert_eq!(render_line(d, &l), line);
            }
        }
        // Values the kernel refused there are values iolane refuses to set.
        for line in include_str!("../tests/fixtures/io.max.refused").lines() {
            let value = line
                .strip_prefix("riops=")
                .and_then(|l| l.strip_suffix(" refused"))
                .unwrap();
            assert!(value.parse::<Limit>().is_err(), "{line}");
        }
    }

    #[test]
    fn files() {
        let text = "259:0 rbps=max wbps=max riops=max wiops=120\n\
                    7:1 rbps=209715200 wbps=209715200 riops=2000 wiops=2000\n";
        let io = IoMax::parse(text).unwrap();
        assert_eq!(io.limits(dev(259, 0)), limits(MAX, MAX, MAX, n(120)));
        assert_eq!(
            io.limits(dev(7, 1)),
            limits(n(209_715_200), n(209_715_200), n(2000), n(2000))
        );
        // A device without a line has no cap.
        assert_eq!(io.limits(dev(7, 2)), Limits::UNLIMITED);
        assert_eq!(
            io.devices().map(|(d, _)| d).collect::<Vec<_>>(),
            [dev(7, 1), dev(259, 0)]
        );
        assert_eq!(IoMax::parse(""), Ok(IoMax::default()));
        assert_eq!(IoMax::parse("\n"), Ok(IoMax::default()));
        assert_eq!(
            IoMax::parse("7:1 riops=5\n7:1 wiops=5\n").map_err(|e| e.to_string()),
            Err("io.max line \"7:1 wiops=5\": device 7:1 appears twice".to_owned())
        );
    }
}
