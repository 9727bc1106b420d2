//! The `vmm` command-line launcher.

use clap::Parser;
use vmm::builder::{run_vm, BuilderError};
use vmm::cli::Cli;

fn main() {
    let cli = Cli::parse();
    vmm::logger::init(cli.log_level);
    if cli.print_memory_map {
        let result = cli
            .memory
            .parse::<vmm::config::Size>()
            .map_err(|e| e.to_string())
            .and_then(|memory| {
                vmm::memory_plan::print_memory_map(memory.0, &cli.device, &mut std::io::stdout())
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = result {
            eprintln!("vmm: error: {e}");
            std::process::exit(2);
        }
        return;
    }
    if let Err(e) = vmm::seccomp::init(cli.seccomp) {
        eprintln!("vmm: error: {e}");
        std::process::exit(2);
    }
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
