# shellcheck shell=bash disable=SC2034 # sourced: the variables are the point
# The pinned versions of every real Kubernetes component the tests build from its Go
# module (tests/k8s/build.sh), in one place. Sourced; defines variables only.
#
# Each component is NAME, its Go package to build, the module that package belongs to and
# the module's version. build.sh keys its cache directory on NAME-VERSION, so bumping a
# version here is all a rebuild needs.

# Go that builds them (Go 1.26.8 is what the machines have).
IOLANE_GO="${IOLANE_GO:-/usr/local/go/bin/go}"

# csi-sanity: the CSI sanity suite (kubernetes-csi/csi-test). v5.6.0 is the newest served.
CSI_TEST_VERSION=v5.6.0
# kube-apiserver, kubectl and kubelet: k8s.io/kubernetes at a release. Its staging modules (k8s.io/api, ...)
# are replaced by the same release's v0.X.Y (build.sh writes the wrapper module).
KUBERNETES_VERSION=v1.34.4
# etcd for kube-apiserver. Debian 12's etcd-server (3.4.23) does serve kube-apiserver 1.34.4
# (measured: /readyz, namespaces), but the apiserver logs `RequestWatchProgress feature is
# not supported` and runs its watch cache without it; Kubernetes 1.34 is released against
# etcd 3.6, so that is what is built (102 s cold).
ETCD_VERSION=v3.6.16
# The CSI sidecars, at the versions deploy/base/kustomization.yaml runs: csi-provisioner
# v6.3.0 there and here. deploy/ runs csi-resizer v2.2.1, a patch release the module proxy
# does not serve (it serves v2.2.0 and v2.3.0), so the tests build v2.2.0, the same minor
# release with the same flags.
CSI_PROVISIONER_VERSION=v6.3.0
CSI_RESIZER_VERSION=v2.2.0

# name -> "package module version"
k8s_component() {
    case "$1" in
    csi-sanity) echo "github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity github.com/kubernetes-csi/csi-test/v5 $CSI_TEST_VERSION" ;;
    kube-apiserver) echo "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes $KUBERNETES_VERSION" ;;
    kubectl) echo "k8s.io/kubernetes/cmd/kubectl k8s.io/kubernetes $KUBERNETES_VERSION" ;;
    kubelet) echo "k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes $KUBERNETES_VERSION" ;;
    etcd) echo "go.etcd.io/etcd/server/v3 go.etcd.io/etcd/server/v3 $ETCD_VERSION" ;;
    csi-provisioner) echo "github.com/kubernetes-csi/external-provisioner/v6/cmd/csi-provisioner github.com/kubernetes-csi/external-provisioner/v6 $CSI_PROVISIONER_VERSION" ;;
    csi-resizer) echo "github.com/kubernetes-csi/external-resizer/v2/cmd/csi-resizer github.com/kubernetes-csi/external-resizer/v2 $CSI_RESIZER_VERSION" ;;
    *) return 1 ;;
    esac
}
K8S_COMPONENTS="csi-sanity kube-apiserver kubectl etcd csi-provisioner csi-resizer kubelet"
