//! `ollama-pool`: parse the command line, load the config, run.

use clap::Parser;
use ollama_pool::cli::{Cli, Command};
use ollama_pool::{app, config, logging, pool::SystemClock};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    logging::init();
    match cli.command {
        Command::Check { config } => match load(&config) {
            Some(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            None => ExitCode::from(2),
        },
        Command::Serve { config, daemon, upgrade } => {
            let Some(loaded) = load(&config) else { return ExitCode::from(2) };
            let mode = app::RunMode { daemon, upgrade };
            match app::build(&loaded, mode, Arc::new(SystemClock)) {
                Ok(app) => {
                    app.server.run(Default::default());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("ollama-pool: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Loads a config, printing each problem on its own line.
fn load(path: &Path) -> Option<config::Loaded> {
    match config::load(path) {
        Ok(l) => Some(l),
        Err(errors) => {
            for e in &errors {
                eprintln!("{}: {e}", path.display());
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.len());
            None
        }
    }
}
