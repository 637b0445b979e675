//! `io.max` (cgroup v2, `MAJ:MIN rbps=.. wbps=.. riops=.. wiops=..` per line), as the
//! reconciler reads it back from a pod's cgroup: no panic, and every line it accepts
//! renders to a line that parses to the same device and caps.
#![no_main]

use iops_controller::iomax::{self, IoMax};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(all) = IoMax::parse(text) {
        for (dev, limits) in all.devices() {
            let line = iomax::render_line(dev, limits);
            let back = iomax::parse_line(&line)
                .unwrap_or_else(|e| panic!("rendered line {line:?} does not parse: {e}"));
            assert_eq!(back, (dev, *limits), "round trip of {line:?}");
            assert_eq!(all.limits(dev), *limits);
        }
    }
    for line in text.lines() {
        if let Ok((dev, limits)) = iomax::parse_line(line) {
            let body = limits.to_string();
            let again: iops_controller::Limits = body
                .parse()
                .unwrap_or_else(|e| panic!("rendered body {body:?} does not parse: {e}"));
            assert_eq!(again, limits, "round trip of {line:?}");
            let dev_text = dev.to_string();
            assert_eq!(
                dev_text.parse::<iops_controller::DeviceNumber>().ok(),
                Some(dev)
            );
        }
    }
});
