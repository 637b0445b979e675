//! `io.stat` (cgroup v2, `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..`
//! per line), as enforcement reads each publication's counters: no panic, and what it
//! accepts, printed back in the kernel's format, parses to the same counters.
#![no_main]

use iops_controller::IoStats;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(stats) = IoStats::parse(text) else {
        return;
    };
    let printed: String = stats
        .devices()
        .map(|(dev, s)| {
            format!(
                "{dev} rbytes={} wbytes={} rios={} wios={} dbytes={} dios={}\n",
                s.rbytes, s.wbytes, s.rios, s.wios, s.dbytes, s.dios
            )
        })
        .collect();
    let back = IoStats::parse(&printed)
        .unwrap_or_else(|e| panic!("printed io.stat {printed:?} does not parse: {e}"));
    assert_eq!(back, stats, "round trip of {printed:?}");
});
