//! The demo's clean-up: undoes what it made, in reverse, also after an error or a signal,
//! every step with a deadline.

use super::run::{line_for, retry};
#[allow(clippy::wildcard_imports)]
use super::*;

/// Undoes what `made` records, in reverse; returns what could not be undone and the
/// `io.max` lines still present for the demo's devices after unpublish.
#[allow(clippy::print_stdout)]
pub(super) async fn cleanup(
    os: &Os,
    made: &mut Made,
    cgroup_root: &Path,
) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let mut lines_left = Vec::new();
    if let Some(tmp) = &made.tmp
        && !made.volumes.is_empty()
    {
        match CsiClient::connect(&tmp.join("csi.sock")).await {
            Ok(client) => {
                for v in made.volumes.iter().rev() {
                    let c = client.clone();
                    if let Err(e) = retry(|| {
                        let mut c = c.clone();
                        let (id, t) = (v.id.clone(), v.target.clone());
                        async move { c.unpublish(&id, &t).await }
                    })
                    .await
                    {
                        problems.push(format!("unpublish {}: {e}", v.id));
                    } else {
                        println!("  unpublished {}", v.id);
                    }
                    if let (Some(dev), Ok(text)) = (v.device, os.read_io_max(&v.cgroup)) {
                        let line = line_for(&text, dev);
                        println!(
                            "    {}/io.max now: {}",
                            v.cgroup.display(),
                            line.as_deref().unwrap_or("no line for the device (max)")
                        );
                        lines_left.extend(line);
                    }
                    for (what, r) in [
                        (
                            "unstage",
                            retry(|| {
                                let mut c = c.clone();
                                let (id, s) = (v.id.clone(), v.staging.clone());
                                async move { c.unstage(&id, &s).await }
                            })
                            .await,
                        ),
                        (
                            "delete",
                            retry(|| {
                                let mut c = c.clone();
                                let id = v.id.clone();
                                async move { c.delete(&id).await }
                            })
                            .await,
                        ),
                    ] {
                        match r {
                            Ok(()) => println!("  {what}d {}", v.id),
                            Err(e) => problems.push(format!("{what} {}: {e}", v.id)),
                        }
                    }
                }
            }
            Err(e) => problems.push(format!("volumes {:?}: {e}", ids(&made.volumes))),
        }
    }
    for cg in made.pod_cgroups.drain(..).rev() {
        match os.remove_cgroup(&cg).await {
            Ok(()) => println!("  removed cgroup {}", cg.display()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(parent) = made.parent.take() {
        match os.remove_cgroup(&parent).await {
            Ok(()) => println!("  removed cgroup {}", parent.display()),
            Err(e) => problems.push(e.to_string()),
        }
    }
    if made.root_io_enabled {
        // Other cgroups may use io by now; then it stays (the kernel refuses with EBUSY).
        match os.subtree_control(cgroup_root, "-io") {
            Ok(()) => println!(
                "  disabled io again in {}/cgroup.subtree_control",
                cgroup_root.display()
            ),
            Err(e) => println!("  left io enabled at the cgroup root: {e}"),
        }
    }
    (problems, lines_left)
}

fn ids(v: &[DemoVolume]) -> Vec<&str> {
    v.iter().map(|v| v.id.as_str()).collect()
}

/// Removes the temp dir unless something is still mounted under it.
#[allow(clippy::print_stdout)]
pub(super) fn remove_tmp(os: &Os, tmp: &Path) {
    let mounted: Vec<PathBuf> = os
        .mounts()
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(tmp))
        .collect();
    if !mounted.is_empty() {
        println!(
            "  left {} in place: still mounted under it: {mounted:?}",
            tmp.display()
        );
        return;
    }
    match os.remove_temp_dir(tmp) {
        Ok(()) => println!("  removed {}", tmp.display()),
        Err(e) => println!("  {e}"),
    }
}
