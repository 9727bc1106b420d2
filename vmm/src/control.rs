//! The API's requests carried out on the running VM, on the event loop's thread.
//!
//! [`VmControl`] answers an [`ApiRequest`]: it reads the VM's state, pauses and resumes the
//! vCPUs through the [`PauseGate`], ends the VM through the exit event, and hands device
//! requests to the [`DeviceHotplug`] it owns. [`ApiEvents`] is its event-manager subscriber:
//! it wakes on the API channel's eventfd.
//!
//! This module does not speak HTTP (the `api` crate) nor hotplug devices (the
//! [`DeviceHotplug`] implementation). A refused request leaves the VM as it was.

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use api::request::{VmAddDevice, VmRemoveDevice};
use api::response::{
    CoverageInfo, DeviceAdded, DeviceEntry, DiskEntry, ExcludedRangeInfo, MemoryMapInfo,
    RamRegionInfo, VmConfigInfo, VmInfo, VmState, VmmPing,
};
use api::{ApiError, ApiInbox, ApiReply, ApiRequest, ApiResult};
use devices::ExitEvent;
use event_manager::{EventOps, Events, MutEventSubscriber};
use passthrough::MemoryMap;
use vmm_sys_util::epoll::EventSet;

use crate::config::{HugePages, MemoryBackend, VmConfig};
use crate::device_hotplug::{AddDevice, DeviceHotplug, DeviceInfo, HotplugFault, HotplugFaultKind};
use crate::vstate::pause::PauseGate;

/// How long a pause waits for every vCPU to stop.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What this VMM can do, as `vmm.ping` lists it.
const FEATURES: &[&str] = &[
    "kvm",
    "iommufd",
    "vfio-pci",
    "virtio-blk",
    "virtio-rng",
    "pause",
    "pcie-hotplug",
];

/// Carries out API requests on the running VM.
pub struct VmControl {
    hotplug: Box<dyn DeviceHotplug>,
    gate: Arc<PauseGate>,
    /// The running vCPU threads, kicked to pause. Valid while the event loop runs: the
    /// builder joins them only after it returns.
    vcpu_threads: Vec<libc::pthread_t>,
    exit: Arc<ExitEvent>,
    config: VmConfigInfo,
    memory_map: MemoryMapInfo,
}

impl VmControl {
    /// Control of a VM started with `config`, its RAM placed by `map`.
    pub fn new(
        hotplug: Box<dyn DeviceHotplug>,
        gate: Arc<PauseGate>,
        vcpu_threads: Vec<libc::pthread_t>,
        exit: Arc<ExitEvent>,
        config: &VmConfig,
        map: &MemoryMap,
    ) -> Self {
        VmControl {
            hotplug,
            gate,
            vcpu_threads,
            exit,
            config: config_info(config),
            memory_map: memory_map_info(map),
        }
    }

    /// Answers one request.
    pub fn handle(&mut self, request: ApiRequest) -> ApiResult {
        match request {
            ApiRequest::Ping => ApiReply::json(&VmmPing {
                version: env!("CARGO_PKG_VERSION").to_string(),
                pid: std::process::id(),
                features: FEATURES.iter().map(|f| f.to_string()).collect(),
            }),
            ApiRequest::Info => ApiReply::json(&VmInfo {
                state: if self.gate.is_paused() {
                    VmState::Paused
                } else {
                    VmState::Running
                },
                config: self.config.clone(),
                devices: self.hotplug.devices().iter().map(device_entry).collect(),
                memory_map: self.memory_map.clone(),
            }),
            ApiRequest::Pause => {
                if self.gate.is_paused() {
                    return Err(ApiError::conflict("the VM is already paused"));
                }
                self.gate
                    .pause(&self.vcpu_threads, PAUSE_TIMEOUT)
                    .map_err(|e| ApiError::new(500, format!("cannot pause: {e}")))?;
                log::info!("API: VM paused");
                Ok(ApiReply::NoContent)
            }
            ApiRequest::Resume => {
                if !self.gate.is_paused() {
                    return Err(ApiError::conflict("the VM is not paused"));
                }
                self.gate.resume();
                log::info!("API: VM resumed");
                Ok(ApiReply::NoContent)
            }
            ApiRequest::Shutdown => {
                log::info!("API: shutdown requested");
                self.exit.request(0);
                Ok(ApiReply::NoContent)
            }
            ApiRequest::AddDevice(VmAddDevice { path, id, iommu }) => {
                let d = self
                    .hotplug
                    .add_device(AddDevice { path, id, iommu })
                    .map_err(fault)?;
                log::info!("API: added device {} at {}", d.id, d.bdf);
                ApiReply::json(&DeviceAdded {
                    id: d.id,
                    bdf: d.bdf,
                })
            }
            ApiRequest::RemoveDevice(VmRemoveDevice { id }) => {
                self.hotplug.remove_device(&id).map_err(fault)?;
                log::info!("API: removed device {id}");
                Ok(ApiReply::NoContent)
            }
        }
    }
}

/// A hotplug refusal as the API says it.
fn fault(f: HotplugFault) -> ApiError {
    let status = match f.kind {
        HotplugFaultKind::BadRequest => 400,
        HotplugFaultKind::NotFound => 404,
        HotplugFaultKind::Conflict => 409,
        HotplugFaultKind::NotReady => 503,
        HotplugFaultKind::Internal => 500,
    };
    ApiError::new(status, f.message)
}

fn device_entry(d: &DeviceInfo) -> DeviceEntry {
    DeviceEntry {
        id: d.id.clone(),
        bdf: d.bdf.clone(),
        path: d.path.display().to_string(),
        iommu: d.iommu,
    }
}

fn config_info(c: &VmConfig) -> VmConfigInfo {
    VmConfigInfo {
        kernel: c.kernel.display().to_string(),
        initrd: c.initrd.as_ref().map(|p| p.display().to_string()),
        cmdline: c.cmdline.clone(),
        memory: c.memory,
        vcpus: c.vcpus,
        memory_backend: match c.backend {
            MemoryBackend::Anonymous => "anonymous",
            MemoryBackend::Memfd => "memfd",
            MemoryBackend::Auto => "auto",
        }
        .to_string(),
        hugepages: c.hugepages == HugePages::On,
        disks: c
            .disks
            .iter()
            .map(|d| DiskEntry {
                path: d.path.display().to_string(),
                readonly: d.readonly,
            })
            .collect(),
        rng: c.rng,
        hotplug_slots: c.hotplug_slots,
    }
}

fn hex(v: u64) -> String {
    format!("{v:#x}")
}

fn memory_map_info(m: &MemoryMap) -> MemoryMapInfo {
    MemoryMapInfo {
        page_size: m.page_size,
        regions: m
            .regions
            .iter()
            .map(|r| RamRegionInfo {
                gpa: hex(r.gpa),
                size: r.size,
            })
            .collect(),
        excluded: m
            .excluded
            .iter()
            .map(|e| ExcludedRangeInfo {
                first: hex(e.range.first_raw()),
                last: hex(e.range.last_raw()),
                reason: e.why.to_string(),
            })
            .collect(),
        coverage: CoverageInfo {
            total: m.coverage.total,
            bytes_2m: m.coverage.bytes_2m,
            bytes_1g: m.coverage.bytes_1g,
        },
    }
}

/// The event-manager subscriber that serves the API channel with a [`VmControl`].
pub struct ApiEvents {
    inbox: ApiInbox,
    control: VmControl,
}

impl ApiEvents {
    /// Serves `inbox` with `control`.
    pub fn new(inbox: ApiInbox, control: VmControl) -> Self {
        ApiEvents { inbox, control }
    }
}

impl MutEventSubscriber for ApiEvents {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let control = &mut self.control;
        self.inbox.serve(|r| control.handle(r));
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.inbox.eventfd().as_raw_fd();
        if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
            log::error!("cannot watch the API eventfd {fd}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device_hotplug::NoHotplug;
    use std::path::PathBuf;

    fn control(exit: Arc<ExitEvent>) -> VmControl {
        let config = VmConfig {
            kernel: PathBuf::from("/k"),
            initrd: None,
            cmdline: "exit=3".into(),
            memory: 64 << 20,
            vcpus: 1,
            serial: crate::config::SerialConfig::Off,
            backend: MemoryBackend::Memfd,
            hugepages: HugePages::Off,
            disks: vec![],
            rng: true,
            devices: vec![],
            api_socket: None,
            hotplug_slots: 0,
        };
        let (_, map) = crate::machine::layout::plan_ram(64 << 20, vec![]).unwrap();
        let hotplug = NoHotplug {
            cold_plugged: vec![DeviceInfo {
                id: "nic".into(),
                bdf: "00:01.0".into(),
                path: "/sys/bus/pci/devices/0000:00:03.0".into(),
                iommu: false,
            }],
        };
        // No vCPU threads: a pause completes at once.
        VmControl::new(
            Box::new(hotplug),
            Arc::new(PauseGate::new()),
            vec![],
            exit,
            &config,
            &map,
        )
    }

    fn json(r: ApiResult) -> serde_json::Value {
        match r.unwrap() {
            ApiReply::Json(b) => serde_json::from_slice(&b).unwrap(),
            ApiReply::NoContent => panic!("no body"),
        }
    }

    #[test]
    fn requests_change_state_and_conflicts_leave_it() {
        let exit = Arc::new(ExitEvent::new().unwrap());
        let mut c = control(exit.clone());
        let ping = json(c.handle(ApiRequest::Ping));
        assert_eq!(ping["pid"], std::process::id());
        let info = json(c.handle(ApiRequest::Info));
        assert_eq!(info["state"], "Running");
        assert_eq!(info["config"]["cmdline"], "exit=3");
        assert_eq!(info["config"]["memory_backend"], "memfd");
        assert_eq!(info["devices"][0]["bdf"], "00:01.0");
        assert_eq!(info["memory_map"]["coverage"]["total"], 64 << 20);
        assert!(!info["memory_map"]["regions"].as_array().unwrap().is_empty());

        assert_eq!(c.handle(ApiRequest::Resume).unwrap_err().status, 409);
        assert_eq!(c.handle(ApiRequest::Pause), Ok(ApiReply::NoContent));
        assert_eq!(json(c.handle(ApiRequest::Info))["state"], "Paused");
        assert_eq!(c.handle(ApiRequest::Pause).unwrap_err().status, 409);
        assert_eq!(c.handle(ApiRequest::Resume), Ok(ApiReply::NoContent));

        let add = ApiRequest::AddDevice(VmAddDevice {
            path: "/sys/bus/pci/devices/0000:00:04.0".into(),
            id: None,
            iommu: false,
        });
        assert_eq!(c.handle(add).unwrap_err().status, 409);
        let remove = |id: &str| ApiRequest::RemoveDevice(VmRemoveDevice { id: id.into() });
        assert_eq!(c.handle(remove("nope")).unwrap_err().status, 404);
        assert_eq!(c.handle(remove("nic")).unwrap_err().status, 409);
        assert_eq!(exit.status(), None);
        assert_eq!(c.handle(ApiRequest::Shutdown), Ok(ApiReply::NoContent));
        assert_eq!(exit.status(), Some(0));
    }

    /// Accepts any PCI-looking path, refuses duplicates: enough to drive the device routes
    /// to success.
    #[derive(Default)]
    struct FakeHotplug {
        devices: Vec<DeviceInfo>,
    }

    impl DeviceHotplug for FakeHotplug {
        fn add_device(&mut self, r: AddDevice) -> Result<DeviceInfo, HotplugFault> {
            if !r.path.starts_with("/sys/bus/pci/devices") {
                return Err(HotplugFault::new(
                    HotplugFaultKind::BadRequest,
                    "not a PCI device",
                ));
            }
            let id = r.id.unwrap_or_else(|| format!("dev{}", self.devices.len()));
            if self.devices.iter().any(|d| d.id == id) {
                return Err(HotplugFault::new(
                    HotplugFaultKind::Conflict,
                    "duplicate id",
                ));
            }
            let d = DeviceInfo {
                id,
                bdf: format!("{:02x}:00.0", self.devices.len() + 1),
                path: r.path,
                iommu: r.iommu,
            };
            self.devices.push(d.clone());
            Ok(d)
        }

        fn remove_device(&mut self, id: &str) -> Result<(), HotplugFault> {
            let n = self.devices.len();
            self.devices.retain(|d| d.id != id);
            if self.devices.len() == n {
                return Err(HotplugFault::new(HotplugFaultKind::NotFound, "no such id"));
            }
            Ok(())
        }

        fn devices(&self) -> Vec<DeviceInfo> {
            self.devices.clone()
        }
    }

    /// The device routes' success paths through a real socket, API thread, channel and
    /// event-manager subscriber, with a fake hotplug behind them; every answer checked
    /// against api/openapi.yaml.
    #[test]
    fn device_routes_succeed_through_the_socket_and_event_loop() {
        use event_manager::{EventManager, SubscriberOps};
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Mutex;

        let socket = vmm_tests::scratch("control.sock");
        let server = api::ApiServer::bind(&socket).unwrap();
        let (link, inbox) = api::api_channel().unwrap();
        let exit = Arc::new(ExitEvent::new().unwrap());
        let mut c = control(exit);
        c.hotplug = Box::new(FakeHotplug::default());
        let thread = server.spawn(link).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let event_loop = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut em =
                    EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
                em.add_subscriber(Arc::new(Mutex::new(ApiEvents::new(inbox, c))));
                while !done.load(Ordering::Acquire) {
                    em.run_with_timeout(10).unwrap();
                }
            })
        };
        let spec = vmm_tests::openapi::OpenApi::load();
        let mut client = api::client::ApiClient::connect(&socket).unwrap();
        let mut call = |route: &str, body: &str| {
            let a = client.call("PUT", route, Some(body.as_bytes())).unwrap();
            spec.check_answer("PUT", route, a.status, &a.body).unwrap();
            a
        };
        let path = r#""path": "/sys/bus/pci/devices/0000:00:03.0""#;
        let a = call(
            "/vm.add-device",
            &format!(r#"{{{path}, "id": "nic", "iommu": true}}"#),
        );
        assert_eq!(a.status, 200, "{}", a.text());
        let added: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            (added["id"].as_str(), added["bdf"].as_str()),
            (Some("nic"), Some("01:00.0"))
        );
        assert_eq!(
            call("/vm.add-device", &format!(r#"{{{path}, "id": "nic"}}"#)).status,
            409
        );
        assert_eq!(call("/vm.add-device", r#"{"path": "/tmp"}"#).status, 400);
        let a = call("/vm.add-device", &format!("{{{path}}}"));
        assert_eq!(a.status, 200, "{}", a.text());

        let info = client.call("GET", "/vm.info", None).unwrap();
        spec.check_answer("GET", "/vm.info", info.status, &info.body)
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.body).unwrap();
        assert_eq!(info["devices"][0]["id"], "nic");
        assert_eq!(info["devices"][0]["iommu"], true);
        assert_eq!(
            info["devices"][0]["path"],
            "/sys/bus/pci/devices/0000:00:03.0"
        );
        assert_eq!(info["devices"].as_array().unwrap().len(), 2);

        let mut call = |route: &str, body: &str| {
            let a = client.call("PUT", route, Some(body.as_bytes())).unwrap();
            spec.check_answer("PUT", route, a.status, &a.body).unwrap();
            a.status
        };
        assert_eq!(call("/vm.remove-device", r#"{"id": "nic"}"#), 204);
        assert_eq!(call("/vm.remove-device", r#"{"id": "nic"}"#), 404);

        thread.stop();
        assert!(!socket.exists());
        done.store(true, Ordering::Release);
        event_loop.join().unwrap();
    }

    #[test]
    fn fault_kinds_map_to_statuses() {
        for (kind, status) in [
            (HotplugFaultKind::BadRequest, 400),
            (HotplugFaultKind::NotFound, 404),
            (HotplugFaultKind::Conflict, 409),
            (HotplugFaultKind::NotReady, 503),
            (HotplugFaultKind::Internal, 500),
        ] {
            let e = fault(HotplugFault::new(kind, "why"));
            assert_eq!((e.status, e.fault_message.as_str()), (status, "why"));
        }
    }
}
