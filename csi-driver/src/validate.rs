//! Checks that every piece of outside input passes before it reaches a path or an argv.
//!
//! **Architecture Invariant:** request strings become paths or command arguments only as
//! the typed values returned here.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Longest volume name the CSI spec makes a plugin accept.
pub const MAX_NAME_LEN: usize = 128;
/// Longest volume ID iolane issues or accepts.
pub const MAX_ID_LEN: usize = 128;
/// Longest path accepted (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Longest single mount option accepted.
const MAX_MOUNT_FLAG_LEN: usize = 256;
/// Most mount options accepted in one capability.
const MAX_MOUNT_FLAGS: usize = 32;

/// A CSI volume name as the CO sent it: 1..=128 printable characters, no control
/// characters. It never becomes a path; only its hash does.
pub fn volume_name(name: &str) -> Result<&str> {
    if name.is_empty() {
        return Err(Error::invalid("name", "must not be empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "name",
            format!("is {} bytes long, the limit is {MAX_NAME_LEN}", name.len()),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must not contain control characters",
        ));
    }
    Ok(name)
}

/// A volume ID: 1..=128 characters of `[A-Za-z0-9._-]`, starting with an alphanumeric.
/// Such an ID is safe as a file name component.
pub fn volume_id<'a>(field: &str, id: &'a str) -> Result<&'a str> {
    if id.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long, the limit is {MAX_ID_LEN}", id.len()),
        ));
    }
    let first_ok = id.as_bytes()[0].is_ascii_alphanumeric();
    let rest_ok = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !first_ok || !rest_ok {
        return Err(Error::invalid(
            field,
            "may only contain letters, digits, '.', '_' and '-' and must start with a letter or digit",
        ));
    }
    Ok(id)
}

/// An absolute, normalised path: no `..`, no `.`, no empty or NUL bytes, bounded length,
/// and (when `root` is set) inside `root`.
pub fn abs_path(field: &str, path: &str, root: Option<&Path>) -> Result<PathBuf> {
    if path.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(Error::invalid(
            field,
            format!("is {} bytes long, the limit is {MAX_PATH_LEN}", path.len()),
        ));
    }
    if path.bytes().any(|b| b == 0 || b.is_ascii_control()) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(Error::invalid(field, format!("{path:?} is not absolute")));
    }
    // `Path::components` silently drops inner `.`, so look at the raw segments.
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Error::invalid(
            field,
            format!("{path:?} must not contain '.' or '..' components"),
        ));
    }
    let clean: PathBuf = p.components().collect();
    if clean == Path::new("/") {
        return Err(Error::invalid(field, "must not be the root directory"));
    }
    if let Some(root) = root
        && (!clean.starts_with(root) || clean == root)
    {
        return Err(Error::invalid(
            field,
            format!("{path:?} is outside the allowed root {}", root.display()),
        ));
    }
    Ok(clean)
}

/// A node ID: it doubles as a Kubernetes label value in the topology segment, so it must
/// be 1..=63 characters of `[A-Za-z0-9._-]`, beginning and ending with an alphanumeric.
pub fn node_id(id: &str) -> Result<&str> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.as_bytes()[id.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(id)
    } else {
        Err(Error::invalid(
            "node_id",
            format!(
                "{id:?} is not a valid label value (1-63 of [A-Za-z0-9._-], alphanumeric at both ends)"
            ),
        ))
    }
}

/// Mount options from a capability: each must look like `word` or `word=value` with a
/// conservative character set, or be kubelet's SELinux label `context="LABEL"`, so nothing
/// can smuggle a second option or an argv flag.
pub fn mount_flags(flags: &[String]) -> Result<Vec<String>> {
    if flags.len() > MAX_MOUNT_FLAGS {
        return Err(Error::invalid(
            "volume_capability.mount.mount_flags",
            format!(
                "{} options given, the limit is {MAX_MOUNT_FLAGS}",
                flags.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(flags.len());
    for flag in flags {
        let ok = !flag.is_empty()
            && flag.len() <= MAX_MOUNT_FLAG_LEN
            && (plain_flag(flag) || selinux_context_flag(flag));
        if !ok {
            return Err(Error::invalid(
                "volume_capability.mount.mount_flags",
                format!("option {flag:?} is not of the form name, name=value or context=\"label\""),
            ));
        }
        // Options that change what is mounted rather than how are not the CO's to pick.
        let name = flag.split('=').next().unwrap_or_default();
        if matches!(
            name,
            "bind" | "rbind" | "move" | "remount" | "loop" | "offset" | "sizelimit"
        ) {
            return Err(Error::invalid(
                "volume_capability.mount.mount_flags",
                format!("option {flag:?} is not allowed"),
            ));
        }
        out.push(flag.clone());
    }
    Ok(out)
}

/// `name` or `name=value` of `[A-Za-z0-9_=.:-]`, starting with an alphanumeric.
fn plain_flag(flag: &str) -> bool {
    flag.as_bytes()[0].is_ascii_alphanumeric()
        && flag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'=' | b'.' | b':'))
}

/// Kubelet's SELinux mount option (CSIDriver `seLinuxMount`), which it writes with Go's
/// `%q`: `context="LABEL"`. The quotes are what keep an MCS label's comma
/// (`s0:c15,c25`) inside the option when mount(8) splits `-o` at commas, so the whole
/// option must be exactly that: a non-empty label of `[A-Za-z0-9_.:,-]` (no quote, no
/// backslash) between one pair of quotes, with nothing after the closing one.
fn selinux_context_flag(flag: &str) -> bool {
    flag.strip_prefix("context=\"")
        .and_then(|rest| rest.strip_suffix('"'))
        .is_some_and(|label| {
            !label.is_empty()
                && label.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b',')
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(volume_name("pvc-1234").is_ok());
        assert!(volume_name(&"a".repeat(128)).is_ok());
        assert!(volume_name(&"a".repeat(129)).is_err());
        assert!(volume_name("").is_err());
        assert!(volume_name("a\nb").is_err());
        // Names are hashed, never used as paths, so slashes are allowed.
        assert!(volume_name("../../etc").is_ok());
    }

    #[test]
    fn ids() {
        assert!(volume_id("volume_id", "lv-0123abcd").is_ok());
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "a\0b",
            &"a".repeat(129),
        ] {
            let err = volume_id("volume_id", bad).unwrap_err().to_string();
            assert!(err.starts_with("volume_id: "), "{bad:?}: {err}");
        }
    }

    #[test]
    fn paths() {
        assert_eq!(
            abs_path("target_path", "/var/lib/kubelet/pods/x/", None).unwrap(),
            PathBuf::from("/var/lib/kubelet/pods/x")
        );
        for bad in ["", "rel/x", "/a/../b", "/a/./b", "/", "/a\0b"] {
            assert!(abs_path("target_path", bad, None).is_err(), "{bad:?}");
        }
        let root = Path::new("/var/lib/kubelet");
        assert!(abs_path("target_path", "/var/lib/kubelet/pods/a", Some(root)).is_ok());
        assert!(abs_path("target_path", "/var/lib/kubelet", Some(root)).is_err());
        assert!(abs_path("target_path", "/var/lib/kubeletx/a", Some(root)).is_err());
        assert!(abs_path("target_path", "/etc/passwd", Some(root)).is_err());
    }

    #[test]
    fn nodes() {
        assert!(node_id("worker-1.example").is_ok());
        assert!(node_id("").is_err());
        assert!(node_id("-a").is_err());
        assert!(node_id(&"a".repeat(64)).is_err());
    }

    /// Every mount option shape: whether it is accepted on its own.
    const FLAG_CASES: &[(&str, bool)] = &[
        ("noatime", true),
        ("commit=30", true),
        ("errors=remount-ro", true),
        // Kubelet's SELinux label option, as Go's %q writes it.
        (
            r#"context="system_u:object_r:container_file_t:s0:c15,c25""#,
            true,
        ),
        (r#"context="system_u:object_r:container_file_t:s0""#, true),
        ("", false),
        ("-o", false),
        ("a,b", false),
        ("bind", false),
        ("x y", false),
        ("rw;rm", false),
        // A second option smuggled after the closing quote.
        (r#"context="a",rw"#, false),
        // No closing quote: mount(8) would read the rest of the line as the label.
        (r#"context="a"#, false),
        (r#"context=""#, false),
        // Unquoted: mount(8) splits at the comma and passes `b` on as an option.
        ("context=a,b", false),
        (r#"context="""#, false),
        // Quotes anywhere but around a context value.
        (r#"context="a"b""#, false),
        (r#"noatime""#, false),
        (r#""noatime""#, false),
        (r#"commit="30""#, false),
        (r#"fscontext="a:b""#, false),
        (r#"context="a"","noatime"#, false),
        (r#"context='a,b'"#, false),
        // Backslashes, inside or outside the quotes.
        (r#"context="a\"b""#, false),
        (r#"context="a\b""#, false),
        (r"commit\=30", false),
        (r#"context="a b""#, false),
    ];

    #[test]
    fn flags() {
        for &(flag, accepted) in FLAG_CASES {
            match mount_flags(&[flag.to_owned()]) {
                Ok(out) => {
                    assert!(accepted, "{flag:?} was accepted");
                    assert_eq!(out, [flag], "{flag:?} was changed");
                }
                Err(e) => {
                    assert!(!accepted, "{flag:?} was refused: {e}");
                    assert!(
                        matches!(&e, Error::InvalidArgument { field, .. }
                            if field == "volume_capability.mount.mount_flags"),
                        "{flag:?}: {e}"
                    );
                }
            }
        }
        // Kubelet appends the label to the class's own options.
        let with_label = [
            "noatime".to_owned(),
            r#"context="system_u:object_r:container_file_t:s0:c1,c2""#.to_owned(),
        ];
        assert_eq!(mount_flags(&with_label).unwrap(), with_label);
        let too_long = format!(r#"context="{}""#, "a".repeat(MAX_MOUNT_FLAG_LEN));
        assert!(mount_flags(&[too_long]).is_err());
    }
}
