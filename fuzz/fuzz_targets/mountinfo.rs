//! `/proc/self/mountinfo` (proc(5)), which the node reads to find its staging and
//! publication mounts: no panic, and every entry it accepts, printed back the way the
//! kernel prints it (octal escapes for space, tab, newline and backslash), parses to the
//! same entry.
#![no_main]

use csi_driver::os::MountEntry;
use csi_driver::os::mountinfo;
use libfuzzer_sys::fuzz_target;

/// The kernel's `show_mountinfo` escaping of a path or source field.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            ' ' | '\t' | '\n' | '\\' => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn print(e: &MountEntry) -> String {
    let mut line = format!(
        "{} {} {}:{} {} {} {} - {} {}",
        e.mount_id,
        e.parent_id,
        e.major,
        e.minor,
        escape(&e.root.to_string_lossy()),
        escape(&e.mount_point.to_string_lossy()),
        e.options,
        e.fs_type,
        escape(&e.source),
    );
    if !e.super_options.is_empty() {
        line.push(' ');
        line.push_str(&e.super_options);
    }
    line
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = mountinfo::parse(text) else {
        return;
    };
    for e in &entries {
        let _ = e.read_only();
        // The kernel never prints an empty field; an entry with one cannot be printed
        // back into the same columns.
        let printable = [
            e.root.as_os_str().is_empty(),
            e.mount_point.as_os_str().is_empty(),
            e.options.is_empty(),
            e.fs_type.is_empty(),
            e.source.is_empty(),
        ]
        .iter()
        .all(|empty| !empty);
        if !printable {
            continue;
        }
        let line = print(e);
        let back = mountinfo::parse(&line)
            .unwrap_or_else(|err| panic!("printed line {line:?} does not parse: {err}"));
        assert_eq!(
            back.as_slice(),
            std::slice::from_ref(e),
            "round trip of {line:?}"
        );
    }
});
