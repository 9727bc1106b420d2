//! `vmm-remote`: drives a running VMM through its API socket.

use std::path::PathBuf;

use api::client::{Answer, ApiClient};
use api::response::Fault;
use clap::{Parser, Subcommand};

const AFTER_HELP: &str = "\
Examples:
  vmm-remote --api-socket /tmp/vmm.sock ping
  vmm-remote --api-socket /tmp/vmm.sock add-device path=/sys/bus/pci/devices/0000:00:03.0,id=nic,iommu=on
  vmm-remote --api-socket /tmp/vmm.sock remove-device nic

Answers with a body are printed as JSON on stdout. Exit status: 0 on success; 1 when the VMM
refused the request (its fault message is printed on stderr); 2 when the VMM could not be
reached or the arguments are wrong.";

/// Controls a running vmm through its --api-socket.
#[derive(Debug, Parser)]
#[command(name = "vmm-remote", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// The socket the VMM was started with (vmm --api-socket PATH).
    #[arg(long, value_name = "PATH")]
    api_socket: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The VMM's version, pid and features.
    Ping,
    /// The VM's state, configuration, devices and memory map.
    Info,
    /// Stop the vCPUs.
    Pause,
    /// Let paused vCPUs run again.
    Resume,
    /// Stop the VM; the VMM exits 0.
    Shutdown,
    /// Hot-add a passthrough device.
    AddDevice {
        /// path=/sys/bus/pci/devices/DDDD:BB:DD.F[,id=NAME][,iommu=on|off]
        spec: String,
    },
    /// Remove a hot-plugged device by id.
    RemoveDevice {
        /// The device's id.
        id: String,
    },
}

/// `path=...[,id=...][,iommu=on]` as the JSON body of vm.add-device.
fn add_device_body(spec: &str) -> Result<String, String> {
    let mut body = serde_json::Map::new();
    for part in spec.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("'{part}' is not key=value"))?;
        let value = match k {
            "path" | "id" => serde_json::Value::String(v.to_string()),
            "iommu" => match v {
                "on" | "true" => serde_json::Value::Bool(true),
                "off" | "false" => serde_json::Value::Bool(false),
                _ => return Err(format!("iommu={v}: use on or off")),
            },
            _ => return Err(format!("unknown key '{k}': use path, id or iommu")),
        };
        if body.insert(k.to_string(), value).is_some() {
            return Err(format!("{k} given twice"));
        }
    }
    if !body.contains_key("path") {
        return Err("path=/sys/bus/pci/devices/... is required".into());
    }
    Ok(serde_json::Value::Object(body).to_string())
}

fn main() {
    let cli = Cli::parse();
    let (method, route, body) = match &cli.command {
        Command::Ping => ("GET", "/vmm.ping", None),
        Command::Info => ("GET", "/vm.info", None),
        Command::Pause => ("PUT", "/vm.pause", None),
        Command::Resume => ("PUT", "/vm.resume", None),
        Command::Shutdown => ("PUT", "/vm.shutdown", None),
        Command::AddDevice { spec } => match add_device_body(spec) {
            Ok(b) => ("PUT", "/vm.add-device", Some(b)),
            Err(e) => {
                eprintln!("vmm-remote: error: add-device {spec}: {e}");
                std::process::exit(2);
            }
        },
        Command::RemoveDevice { id } => (
            "PUT",
            "/vm.remove-device",
            Some(serde_json::json!({ "id": id }).to_string()),
        ),
    };
    let answer = ApiClient::connect(&cli.api_socket)
        .and_then(|mut c| c.call(method, route, body.as_deref().map(str::as_bytes)));
    match answer {
        Ok(a) if a.status < 300 => print_body(&a),
        Ok(a) => {
            let msg = serde_json::from_slice::<Fault>(&a.body)
                .map(|f| f.fault_message)
                .unwrap_or_else(|_| a.text());
            eprintln!("vmm-remote: error: {msg} (HTTP {})", a.status);
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("vmm-remote: error: {e}");
            std::process::exit(2);
        }
    }
}

fn print_body(a: &Answer) {
    if a.body.is_empty() {
        return;
    }
    match serde_json::from_slice::<serde_json::Value>(&a.body) {
        Ok(v) => println!(
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_else(|_| a.text())
        ),
        Err(_) => println!("{}", a.text()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_device_specs() {
        let v: serde_json::Value = serde_json::from_str(
            &add_device_body("path=/sys/bus/pci/devices/0000:00:03.0,id=nic,iommu=on").unwrap(),
        )
        .unwrap();
        assert_eq!(v["path"], "/sys/bus/pci/devices/0000:00:03.0");
        assert_eq!(v["id"], "nic");
        assert_eq!(v["iommu"], true);
        for bad in [
            "id=x",
            "path=/x,iommu=maybe",
            "path=/x,color=red",
            "path",
            "path=/a,path=/b",
        ] {
            assert!(add_device_body(bad).is_err(), "{bad}");
        }
    }
}
