//! Kubernetes look-ups: the `iolane.dev/tier` annotation of a PVC, and the client
//! `--kubernetes`/`--kubeconfig` ask for ([`pvc_annotations_from_flags`]).
//!
//! CreateVolume gets the PVC's name and namespace from csi-provisioner
//! (`--extra-create-metadata`: [`keys::PVC_NAME`], [`keys::PVC_NAMESPACE`]) and asks
//! [`PvcAnnotations::tier`] for the annotation, which tier resolution then checks against
//! the StorageClass's allowed tiers. [`KubePvcAnnotations`] reads it from the API server
//! (`GET /api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}`; RBAC: `get` on
//! `persistentvolumeclaims`).
//!
//! Both names are checked as Kubernetes names (namespace: DNS-1123 label, PVC: DNS-1123
//! subdomain) before any request, and every look-up is bounded by a timeout as a whole:
//! kube's client retries 429, 503 and 504 answers with backoff, and those retries end
//! at the timeout too. Each
//! [`LookupError`] variant is meant for one gRPC code: `InvalidName` INVALID_ARGUMENT
//! (naming the parameter), `NotFound` NOT_FOUND, `Forbidden` PERMISSION_DENIED,
//! `Timeout` and `Unavailable` UNAVAILABLE, `Unexpected` INTERNAL.

use std::error::Error as _;
use std::fmt;
use std::io;
use std::time::Duration;

use iops_controller::keys;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::Api;

/// How long a look-up may take when the caller has no better bound.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The PVC annotation source `--kubernetes` asks for: with `auto`, the API of the cluster
/// iolane runs in (or `kubeconfig`'s); none outside a cluster or with `off`.
pub async fn pvc_annotations_from_flags(
    mode: crate::config::KubeMode,
    kubeconfig: Option<&std::path::Path>,
) -> Result<Option<std::sync::Arc<dyn PvcAnnotations>>, Box<dyn std::error::Error>> {
    if mode == crate::config::KubeMode::Off {
        tracing::info!("--kubernetes=off: PVC annotations are not read");
        return Ok(None);
    }
    let client = if let Some(path) = kubeconfig {
        KubePvcAnnotations::from_config(kubeconfig_file(path).await?, DEFAULT_TIMEOUT)?
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        KubePvcAnnotations::infer(DEFAULT_TIMEOUT).await?
    } else {
        tracing::info!("not in a cluster and no --kubeconfig: PVC annotations are not read");
        return Ok(None);
    };
    tracing::info!("PVC annotations are read through the Kubernetes API");
    Ok(Some(std::sync::Arc::new(client)))
}

/// The client the node's re-tiering watch uses, under the same rule as
/// [`pvc_annotations_from_flags`]: none with `--kubernetes=off` or outside a cluster
/// without `--kubeconfig`.
pub async fn watch_client(
    mode: crate::config::KubeMode,
    kubeconfig: Option<&std::path::Path>,
) -> Result<Option<kube::Client>, String> {
    if mode == crate::config::KubeMode::Off
        || (kubeconfig.is_none() && std::env::var_os("KUBERNETES_SERVICE_HOST").is_none())
    {
        tracing::info!("no Kubernetes API: volumes are not re-tiered live");
        return Ok(None);
    }
    client(kubeconfig).await.map(Some)
}

/// The client configuration of the kubeconfig file at `path` (its current context).
pub async fn kubeconfig_file(path: &std::path::Path) -> Result<kube::Config, String> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| format!("--kubeconfig {}: {e}", path.display()))
}

/// A client from `kubeconfig` when given, else the pod's service account (or the default
/// kubeconfig outside a cluster). Must run inside a tokio runtime.
pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => kubeconfig_file(path).await?,
        None => kube::Config::infer()
            .await
            .map_err(|e| ClientError::Infer(e).to_string())?,
    };
    kube::Client::try_from(config).map_err(|e| ClientError::Client(e).to_string())
}

/// Longest DNS-1123 label (a namespace name).
const MAX_LABEL_LEN: usize = 63;
/// Longest DNS-1123 subdomain (a PVC name).
const MAX_SUBDOMAIN_LEN: usize = 253;

/// Why a PVC's annotation could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// A name that is not a Kubernetes name; `field` is the CreateVolume parameter key.
    #[error("{field} {value:?} is not a valid Kubernetes name: {reason}")]
    InvalidName {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("persistentvolumeclaim {namespace}/{name} not found")]
    NotFound { namespace: String, name: String },
    /// The API server refused iolane's credentials (401) or its RBAC (403).
    #[error(
        "not allowed to read persistentvolumeclaim {namespace}/{name} (HTTP {code}): {message}"
    )]
    Forbidden {
        namespace: String,
        name: String,
        code: u16,
        message: String,
    },
    #[error(
        "kubernetes API did not answer within {timeout:?} reading persistentvolumeclaim \
         {namespace}/{name}"
    )]
    Timeout {
        namespace: String,
        name: String,
        timeout: Duration,
    },
    /// The API server could not be reached, or answered that it cannot serve now (429,
    /// 5xx).
    #[error(
        "kubernetes API unavailable reading persistentvolumeclaim {namespace}/{name}: {reason}"
    )]
    Unavailable {
        namespace: String,
        name: String,
        reason: String,
    },
    /// Any other answer: an unexpected status code or a body that is not a PVC.
    #[error("reading persistentvolumeclaim {namespace}/{name}: {reason}")]
    Unexpected {
        namespace: String,
        name: String,
        reason: String,
    },
}

/// A Kubernetes client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("kubernetes client configuration (in-cluster or kubeconfig): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("kubernetes API URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Reads PVC annotations.
#[async_trait::async_trait]
pub trait PvcAnnotations: Send + Sync + fmt::Debug {
    /// The PVC's `iolane.dev/tier` annotation ([`keys::TIER`]); `None` when the PVC has
    /// no such annotation.
    async fn tier(&self, namespace: &str, name: &str) -> Result<Option<String>, LookupError>;
}

/// [`PvcAnnotations`] over the Kubernetes API.
#[derive(Clone)]
pub struct KubePvcAnnotations {
    client: kube::Client,
    timeout: Duration,
}

impl fmt::Debug for KubePvcAnnotations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubePvcAnnotations")
            .field("default_namespace", &self.client.default_namespace())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl KubePvcAnnotations {
    /// From the pod's service account when running in a cluster, else from the kubeconfig
    /// (`KUBECONFIG`, `~/.kube/config`). Must run inside a tokio runtime.
    pub async fn infer(timeout: Duration) -> Result<Self, ClientError> {
        let config = kube::Config::infer().await.map_err(ClientError::Infer)?;
        Self::from_config(config, timeout)
    }

    /// For an API server at `url` without credentials (tests, `kubectl proxy`). Must run
    /// inside a tokio runtime.
    pub fn from_url(url: &str, timeout: Duration) -> Result<Self, ClientError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| ClientError::Url {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        if uri.scheme().is_none() || uri.authority().is_none() {
            return Err(ClientError::Url {
                url: url.to_owned(),
                reason: "must be absolute, such as https://host:6443".to_owned(),
            });
        }
        Self::from_config(kube::Config::new(uri), timeout)
    }

    /// From a ready configuration; its connect timeout becomes `timeout`, and every
    /// look-up is bounded by `timeout` as a whole. Must run inside a tokio runtime.
    pub fn from_config(mut config: kube::Config, timeout: Duration) -> Result<Self, ClientError> {
        config.connect_timeout = Some(timeout);
        // The whole request is bounded below; a shorter inner bound would only turn a
        // timeout into a less clear error.
        config.read_timeout = None;
        config.write_timeout = None;
        let client = kube::Client::try_from(config).map_err(ClientError::Client)?;
        Ok(KubePvcAnnotations { client, timeout })
    }
}

#[async_trait::async_trait]
impl PvcAnnotations for KubePvcAnnotations {
    async fn tier(&self, namespace: &str, name: &str) -> Result<Option<String>, LookupError> {
        dns1123_label(keys::PVC_NAMESPACE, namespace)?;
        dns1123_subdomain(keys::PVC_NAME, name)?;
        let api: Api<PersistentVolumeClaim> = Api::namespaced(self.client.clone(), namespace);
        tracing::debug!(
            pvc.namespace = namespace,
            pvc.name = name,
            "get persistentvolumeclaim"
        );
        let pvc = match tokio::time::timeout(self.timeout, api.get(name)).await {
            Ok(Ok(pvc)) => pvc,
            Ok(Err(e)) => return Err(classify(e, namespace, name, self.timeout)),
            Err(_elapsed) => {
                return Err(LookupError::Timeout {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        Ok(pvc
            .metadata
            .annotations
            .and_then(|mut annotations| annotations.remove(keys::TIER)))
    }
}

/// The [`LookupError`] for a failed request.
fn classify(e: kube::Error, namespace: &str, name: &str, timeout: Duration) -> LookupError {
    let (namespace, name) = (namespace.to_owned(), name.to_owned());
    match &e {
        kube::Error::Api(status) => {
            let code = status.code;
            let message = if status.message.is_empty() {
                status.reason.clone()
            } else {
                status.message.clone()
            };
            match code {
                404 => LookupError::NotFound { namespace, name },
                401 | 403 => LookupError::Forbidden {
                    namespace,
                    name,
                    code,
                    message,
                },
                429 | 500..=599 => LookupError::Unavailable {
                    namespace,
                    name,
                    reason: format!("HTTP {code}: {message}"),
                },
                _ => LookupError::Unexpected {
                    namespace,
                    name,
                    reason: format!("HTTP {code}: {message}"),
                },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) if timed_out(&e) => {
            LookupError::Timeout {
                namespace,
                name,
                timeout,
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => LookupError::Unavailable {
            namespace,
            name,
            reason: chain(&e),
        },
        _ => LookupError::Unexpected {
            namespace,
            name,
            reason: chain(&e),
        },
    }
}

/// Whether any cause of `e` is an IO timeout (the connect timeout).
fn timed_out(e: &kube::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>()
            && io.kind() == io::ErrorKind::TimedOut
        {
            return true;
        }
        cause = c.source();
    }
    false
}

/// `e` and its causes, joined with `: `.
fn chain(e: &kube::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// A DNS-1123 label, as namespaces are named: 1-63 characters of `[a-z0-9-]`, starting
/// and ending with a letter or digit.
pub fn dns1123_label<'a>(field: &'static str, value: &'a str) -> Result<&'a str, LookupError> {
    let invalid = |reason| LookupError::InvalidName {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > MAX_LABEL_LEN {
        return Err(invalid("must be at most 63 characters"));
    }
    label_chars(value).map_err(invalid)?;
    Ok(value)
}

/// A DNS-1123 subdomain, as PVCs are named: at most 253 characters, dot-separated labels of
/// `[a-z0-9-]`, each starting and ending with a letter or digit.
pub fn dns1123_subdomain<'a>(field: &'static str, value: &'a str) -> Result<&'a str, LookupError> {
    let invalid = |reason| LookupError::InvalidName {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if value.len() > MAX_SUBDOMAIN_LEN {
        return Err(invalid("must be at most 253 characters"));
    }
    for label in value.split('.') {
        label_chars(label).map_err(invalid)?;
    }
    Ok(value)
}

/// The character rules shared by labels and each part of a subdomain.
fn label_chars(label: &str) -> Result<(), &'static str> {
    const RULE: &str = "must consist of lowercase letters, digits and '-' (and '.' between \
                        parts of a PVC name), starting and ending with a letter or digit";
    let b = label.as_bytes();
    let edge = |c: Option<&u8>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let inner = b
        .iter()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if edge(b.first()) && edge(b.last()) && inner {
        Ok(())
    } else {
        Err(RULE)
    }
}

#[cfg(test)]
mod tests;
