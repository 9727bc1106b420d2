//! The `vmm` command-line launcher.

use clap::Parser;
use vmm::builder::{run_vm, BuilderError};
use vmm::cli::Cli;

fn main() {
    let cli = Cli::parse();
    vmm::logger::init(cli.log_level);
    let status = match cli
        .into_config()
        .map_err(BuilderError::from)
        .and_then(|c| run_vm(&c))
    {
        Ok(status) => status,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            2
        }
    };
    std::process::exit(status);
}
