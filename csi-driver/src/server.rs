//! Serving the CSI services on a Unix socket until SIGTERM or SIGINT.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;

use crate::driver::Driver;
use crate::grpc;

/// Start-up and serving failures.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: {reason}")]
    Socket { path: String, reason: String },
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("installing signal handler: {0}")]
    Signal(std::io::Error),
}

fn socket_err(path: &Path, reason: impl std::fmt::Display) -> ServeError {
    ServeError::Socket {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Binds `path`, replacing a stale socket (and only a socket), with mode 0660.
pub fn bind(path: &Path) -> Result<UnixListener, ServeError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            fs::remove_file(path).map_err(|e| socket_err(path, e))?;
        }
        Ok(_) => {
            return Err(socket_err(
                path,
                "exists and is not a socket; refusing to remove it",
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(socket_err(path, e)),
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| socket_err(path, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| socket_err(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o660))
        .map_err(|e| socket_err(path, e))?;
    Ok(listener)
}

/// Resolves on SIGTERM or SIGINT.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ServeError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signal)?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
        }
    })
}

/// Serves a node's Identity, Controller and Node until SIGTERM/SIGINT, then removes the
/// socket.
pub async fn serve(driver: Driver, plugin_name: &str, socket: &Path) -> Result<(), ServeError> {
    let shutdown = shutdown_signal()?;
    serve_until(driver, plugin_name, socket, shutdown).await
}

/// Serves until `shutdown` completes, then removes the socket. `iolane demo` serves its
/// own node in-process this way and stops it after cleaning up through it.
pub async fn serve_until(
    driver: Driver,
    plugin_name: &str,
    socket: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let listener = bind(socket)?;
    let (identity, controller, node) = grpc::services(&driver, plugin_name);
    tracing::info!(socket = %socket.display(), node.id = %driver.settings().node_id, "serving CSI");
    let result = tonic::transport::Server::builder()
        .add_service(identity)
        .add_service(controller)
        .add_service(node)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = fs::remove_file(socket);
    result.map_err(ServeError::from)
}

/// Serves the central controller's Identity and Controller (`iolane controller`) until
/// SIGTERM/SIGINT, then removes the socket.
pub async fn serve_central(
    plugin_name: &str,
    socket: &Path,
    controller: grpc::CentralControllerService,
) -> Result<(), ServeError> {
    let listener = bind(socket)?;
    let (identity, controller) = grpc::central_services(plugin_name, controller);
    let shutdown = shutdown_signal()?;
    tracing::info!(socket = %socket.display(), "serving the central CSI controller");
    let result = tonic::transport::Server::builder()
        .add_service(identity)
        .add_service(controller)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let _ = fs::remove_file(socket);
    result.map_err(ServeError::from)
}
