//! Configuration: the command line (`cli.rs`: clap, every flag also from an environment
//! variable) and the node config file (`node.rs`: TOML, the same text the ConfigMap
//! carries; its `[priority]` section in `priority.rs`). The settings of an LVM device class, and their checks, live with the lvm
//! backend ([`crate::backend::lvm::DeviceClass`]).

mod cli;
mod node;
mod priority;

pub use cli::{
    BenchArgs, Cli, Command, ControllerArgs, DemoArgs, KubeMode, LogFormat, NodeArgs, NodeCleanup,
    StatusArgs, driver_name, socket_path,
};
pub use node::{LoopConfig, NodeConfig};
pub use priority::{DeviceCapacity, PrioritySection};

/// A config problem, naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}
