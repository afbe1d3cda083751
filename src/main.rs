//! `ollama-pool`: parse the command line, load the config, run.

use clap::Parser;
use ollama_pool::cli::{self, Cli, Command};
use ollama_pool::{app, demo, logging, pool::SystemClock};
use std::process::ExitCode;
use std::sync::Arc;

// glibc malloc showed up as ~18 % of the proxy's CPU under load (pingora allocates per request);
// mimalloc's thread-local free lists take most of that away. See benches/README.md.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates in plain words; the proxy's own info lines would drown that out.
    logging::init(if matches!(cli.command, Command::Demo { .. }) { "warn" } else { "info" });
    match cli.command {
        Command::Check { config } => match cli::load(&config.config) {
            Some(loaded) => cli::report_files(&config.config, &loaded),
            None => ExitCode::from(2),
        },
        Command::Serve { config, daemon, upgrade } => {
            let Some(loaded) = cli::load(&config.config) else { return ExitCode::from(2) };
            match app::build(&loaded, app::RunMode { daemon, upgrade }, Arc::new(SystemClock)) {
                Ok(app) => {
                    app.serve();
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ollama-pool: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Reload { config } => match cli::load(&config.config) {
            Some(loaded) => cli::run_reload(&loaded),
            None => ExitCode::from(2),
        },
        Command::Usage { config, from, to, by, client, provider, model, format } => match cli::load(&config.config) {
            Some(loaded) => cli::run_usage(&loaded, cli::UsageArgs { from, to, by, client, provider, model, format }),
            None => ExitCode::from(2),
        },
        Command::Keys(cmd) => cli::run_keys(cmd),
        Command::Store(cmd) => cli::run_store(cmd),
        Command::Tokens(cmd) => cli::run_tokens(cmd),
        Command::Demo { port, admin_port, exit_after_script } => {
            demo::run(demo::DemoOptions { port, admin_port, exit_after_script })
        }
    }
}
