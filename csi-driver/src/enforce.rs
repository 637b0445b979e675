//! Which pod a kubelet publication is for: the pod UID in kubelet's target paths, so that
//! publications found in the mount table after a restart can be handed back to the
//! enforcement controller (`iops_controller::enforcement`), which keeps their caps.

use std::path::{Component, Path};

use iops_controller::PodUid;

/// The pod UID in a kubelet target path:
/// `<kubelet>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount` (filesystem volumes) or
/// `<kubelet>/plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<uid>` (raw block).
pub fn pod_uid_from_target(target: &Path) -> Option<PodUid> {
    let parts: Vec<&str> = target
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    let n = parts.len();
    if n >= 6
        && parts[n - 1] == "mount"
        && parts[n - 3] == "kubernetes.io~csi"
        && parts[n - 4] == "volumes"
        && parts[n - 6] == "pods"
    {
        return PodUid::parse(parts[n - 5]).ok();
    }
    if n >= 4 && parts[n - 3] == "publish" && parts[n - 4] == "volumeDevices" {
        return PodUid::parse(parts[n - 1]).ok();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6e7f9a-3c1d-4e2f-8a9b-1c2d3e4f5a6b";

    #[test]
    fn kubelet_target_paths_name_the_pod() {
        let fs = format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/pvc-1/mount");
        assert_eq!(
            pod_uid_from_target(Path::new(&fs)).map(|u| u.to_string()),
            Some(UID.to_owned())
        );
        let block =
            format!("/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/pvc-1/{UID}");
        assert_eq!(
            pod_uid_from_target(Path::new(&block)).map(|u| u.to_string()),
            Some(UID.to_owned())
        );
        for other in [
            "/mnt/x",
            "/var/lib/kubelet/pods/not-a-uid/volumes/kubernetes.io~csi/pvc-1/mount",
            "/var/lib/kubelet/pods/x/volumes/kubernetes.io~empty-dir/pvc-1/mount",
            "/mount",
        ] {
            assert_eq!(pod_uid_from_target(Path::new(other)), None, "{other}");
        }
    }
}
