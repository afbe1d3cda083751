//! The command line (SPEC §2.1). Exit codes: 0 ok, 2 bad config or usage, 1 runtime failure.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(name = "ollama-pool", version, about = "Pools many upstream LLM API keys behind one endpoint")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// Config file (YAML).
        #[arg(short = 'c', long = "config", default_value = "conf/ollama-pool.yaml")]
        config: PathBuf,
        /// Detach and run in the background (pingora daemon mode; see server.pid_file).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listeners of a running instance (zero-downtime upgrade; see server.upgrade_sock).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0, or print every problem with its YAML path and exit 2.
    Check {
        #[arg(short = 'c', long = "config")]
        config: PathBuf,
    },
}
