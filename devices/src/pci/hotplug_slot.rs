//! A PCIe hot-plug slot: the Slot Capabilities, Slot Control and Slot Status registers of
//! a downstream port, and the link state that follows from them, as Linux's `pciehp`
//! drives them.
//!
//! The slot has an attention button, a power controller, power and attention indicators
//! and presence detection; no MRL sensor, no electromechanical interlock. Surprise removal
//! is advertised only when asked for.
//!
//! State machine (VMM actions on the left, guest writes on the right):
//!
//! * add: [`HotplugSlot::insert`] (Presence Detect State = 1, Presence Detect Changed)
//!   then [`HotplugSlot::press_button`] (Attention Button Pressed). The guest powers the
//!   slot on (Power Controller Control = on); the link comes up (Data Link Layer Link
//!   Active) at once since a card is present; the guest lights the power indicator. The
//!   VMM waits for [`HotplugSlot::powered_on`].
//! * remove: [`HotplugSlot::press_button`]; the guest unbinds its driver and powers the
//!   slot off (link down); the VMM waits for [`HotplugSlot::powered_off`], then
//!   [`HotplugSlot::eject`] (presence cleared, Presence Detect Changed).
//! * surprise removal: [`HotplugSlot::eject`] while powered: link down with Data Link Layer
//!   State Changed, presence cleared.
//!
//! Command completed: every guest write to Slot Control completes at once (Command
//! Completed set), as Linux expects unless No Command Completed Support is set.
//!
//! Interrupts: the slot reports whether its event interrupt must be sent. That is when the
//! OR over the enabled events (status bit and its enable bit, with Hot-Plug Interrupt
//! Enable) goes from false to true, the edge rule the PCIe spec gives for MSI. The guest
//! clears the status bits (write 1 to clear) before it can get the next one.
//!
//! Link-up after the guest's power-on raises no Data Link Layer State Changed event: Linux
//! polls Link Active itself there, and a late link event would look like a new card.
//!
//! What this module does not do: the rest of the PCIe capability (see `pcie_cap`), the
//! interrupt itself (the port's MSI), power faults and the MRL.

/// Slot Capabilities: Attention Button Present.
pub const SLTCAP_ABP: u32 = 1 << 0;
/// Slot Capabilities: Power Controller Present.
pub const SLTCAP_PCP: u32 = 1 << 1;
/// Slot Capabilities: Attention Indicator Present.
pub const SLTCAP_AIP: u32 = 1 << 3;
/// Slot Capabilities: Power Indicator Present.
pub const SLTCAP_PIP: u32 = 1 << 4;
/// Slot Capabilities: Hot-Plug Surprise.
pub const SLTCAP_HPS: u32 = 1 << 5;
/// Slot Capabilities: Hot-Plug Capable.
pub const SLTCAP_HPC: u32 = 1 << 6;

/// Slot Control: Attention Button Pressed Enable.
pub const SLTCTL_ABPE: u16 = 1 << 0;
/// Slot Control: Presence Detect Changed Enable.
pub const SLTCTL_PDCE: u16 = 1 << 3;
/// Slot Control: Command Completed Interrupt Enable.
pub const SLTCTL_CCIE: u16 = 1 << 4;
/// Slot Control: Hot-Plug Interrupt Enable.
pub const SLTCTL_HPIE: u16 = 1 << 5;
/// Slot Control: Attention Indicator Control (2 bits).
pub const SLTCTL_AIC: u16 = 0b11 << 6;
/// Slot Control: Power Indicator Control (2 bits).
pub const SLTCTL_PIC: u16 = 0b11 << 8;
/// Power Indicator Control value "on".
pub const SLTCTL_PWR_IND_ON: u16 = 0b01 << 8;
/// Power Indicator Control value "blink".
pub const SLTCTL_PWR_IND_BLINK: u16 = 0b10 << 8;
/// Power Indicator Control value "off".
pub const SLTCTL_PWR_IND_OFF: u16 = 0b11 << 8;
/// Attention Indicator Control value "off".
pub const SLTCTL_ATTN_IND_OFF: u16 = 0b11 << 6;
/// Slot Control: Power Controller Control (1 = power off).
pub const SLTCTL_PCC: u16 = 1 << 10;
/// Slot Control: Data Link Layer State Changed Enable.
pub const SLTCTL_DLLSCE: u16 = 1 << 12;

/// Slot Status: Attention Button Pressed.
pub const SLTSTA_ABP: u16 = 1 << 0;
/// Slot Status: Power Fault Detected.
pub const SLTSTA_PFD: u16 = 1 << 1;
/// Slot Status: MRL Sensor Changed.
pub const SLTSTA_MRLSC: u16 = 1 << 2;
/// Slot Status: Presence Detect Changed.
pub const SLTSTA_PDC: u16 = 1 << 3;
/// Slot Status: Command Completed.
pub const SLTSTA_CC: u16 = 1 << 4;
/// Slot Status: Presence Detect State (read-only).
pub const SLTSTA_PDS: u16 = 1 << 6;
/// Slot Status: Data Link Layer State Changed.
pub const SLTSTA_DLLSC: u16 = 1 << 8;

/// Slot Control bits the guest may write: every enable, both indicators, power control,
/// DLL state changed enable (the Power Fault and MRL enables are accepted and ignored).
const SLTCTL_WRITABLE: u16 = 0x1fff;
/// Status bits that are events (write 1 to clear).
const SLTSTA_EVENTS: u16 =
    SLTSTA_ABP | SLTSTA_PFD | SLTSTA_MRLSC | SLTSTA_PDC | SLTSTA_CC | SLTSTA_DLLSC;

/// Each event status bit with the Slot Control bit that enables its interrupt.
const EVENT_ENABLES: [(u16, u16); 4] = [
    (SLTSTA_ABP, SLTCTL_ABPE),
    (SLTSTA_PDC, SLTCTL_PDCE),
    (SLTSTA_CC, SLTCTL_CCIE),
    (SLTSTA_DLLSC, SLTCTL_DLLSCE),
];

/// One hot-plug slot. See the module docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HotplugSlot {
    caps: u32,
    control: u16,
    /// Event bits only; presence is `present`.
    events: u16,
    present: bool,
}

impl HotplugSlot {
    /// An empty, powered-off slot with physical slot number `number` (unique per port; Linux
    /// names the slot after it). `surprise`: advertise Hot-Plug Surprise.
    pub fn new(number: u16, surprise: bool) -> Self {
        let mut caps = SLTCAP_ABP | SLTCAP_PCP | SLTCAP_AIP | SLTCAP_PIP | SLTCAP_HPC;
        if surprise {
            caps |= SLTCAP_HPS;
        }
        // Physical Slot Number, bits 31:19 (13 bits).
        caps |= u32::from(number & 0x1fff) << 19;
        HotplugSlot {
            caps,
            control: SLTCTL_PCC | SLTCTL_PWR_IND_OFF | SLTCTL_ATTN_IND_OFF,
            events: 0,
            present: false,
        }
    }

    /// The Slot Capabilities register.
    pub fn capabilities(&self) -> u32 {
        self.caps
    }

    /// The Slot Control register.
    pub fn control(&self) -> u16 {
        self.control
    }

    /// The Slot Status register.
    pub fn status(&self) -> u16 {
        self.events | if self.present { SLTSTA_PDS } else { 0 }
    }

    /// Whether a card is in the slot.
    pub fn present(&self) -> bool {
        self.present
    }

    /// Whether the slot has power (Power Controller Control = on).
    pub fn powered(&self) -> bool {
        self.control & SLTCTL_PCC == 0
    }

    /// Whether the link to the card is up: a card is present and powered. The card's
    /// config space is reachable only then.
    pub fn link_active(&self) -> bool {
        self.present && self.powered()
    }

    /// Whether the guest has enabled what a hot-add needs: the hot-plug interrupt and the
    /// attention button or presence detect event.
    pub fn hotplug_enabled(&self) -> bool {
        self.control & SLTCTL_HPIE != 0 && self.control & (SLTCTL_ABPE | SLTCTL_PDCE) != 0
    }

    /// Whether the guest listens to the attention button (what an orderly removal needs).
    pub fn button_enabled(&self) -> bool {
        self.control & (SLTCTL_HPIE | SLTCTL_ABPE) == SLTCTL_HPIE | SLTCTL_ABPE
    }

    /// Whether the guest acts on presence changes itself. Linux's pciehp enables them only
    /// on slots without an attention button (older kernels on every slot); then a new card
    /// needs no button press, and one would ask the guest to power the slot off again.
    pub fn presence_enabled(&self) -> bool {
        self.control & (SLTCTL_HPIE | SLTCTL_PDCE) == SLTCTL_HPIE | SLTCTL_PDCE
    }

    /// The guest is done powering the slot on: power on and the power indicator lit.
    pub fn powered_on(&self) -> bool {
        self.powered() && self.control & SLTCTL_PIC == SLTCTL_PWR_IND_ON
    }

    /// The guest has powered the slot off.
    pub fn powered_off(&self) -> bool {
        !self.powered()
    }

    /// The guest is done powering the slot off: power off and the power indicator dark.
    /// Linux's pciehp turns the indicator off a second after cutting power, and drops any
    /// presence change that comes within that second as caused by the power-off.
    pub fn powered_off_settled(&self) -> bool {
        !self.powered() && self.control & SLTCTL_PIC == SLTCTL_PWR_IND_OFF
    }

    /// Whether an enabled event is pending (the level the interrupt edge is taken from).
    fn pending(&self) -> bool {
        self.control & SLTCTL_HPIE != 0
            && EVENT_ENABLES
                .iter()
                .any(|&(status, enable)| self.events & status != 0 && self.control & enable != 0)
    }

    /// Runs `change` and says whether it raised the interrupt (pending went 0 -> 1).
    fn edge(&mut self, change: impl FnOnce(&mut Self)) -> bool {
        let before = self.pending();
        change(self);
        !before && self.pending()
    }

    /// A card arrives: presence set, Presence Detect Changed. Returns whether to interrupt.
    pub fn insert(&mut self) -> bool {
        self.edge(|s| {
            if !s.present {
                s.present = true;
                s.events |= SLTSTA_PDC;
            }
        })
    }

    /// The attention button is pressed. Returns whether to interrupt.
    pub fn press_button(&mut self) -> bool {
        self.edge(|s| s.events |= SLTSTA_ABP)
    }

    /// The card leaves: presence cleared, Presence Detect Changed, and if it was powered the
    /// link goes down with Data Link Layer State Changed (a surprise removal). Returns
    /// whether to interrupt.
    pub fn eject(&mut self) -> bool {
        self.edge(|s| {
            if s.present {
                if s.link_active() {
                    s.events |= SLTSTA_DLLSC;
                }
                s.present = false;
                s.events |= SLTSTA_PDC;
            }
        })
    }

    /// Guest write of `data` at byte `offset` of the Slot Control (0, 1) / Slot Status (2, 3)
    /// dword. A write to Slot Control completes at once (Command Completed). Returns
    /// whether to interrupt.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> bool {
        let mut value = u32::from(self.control) | u32::from(self.status()) << 16;
        let mut written = 0u32;
        for (i, &b) in data.iter().enumerate() {
            let shift = (offset + i) * 8;
            if shift >= 32 {
                break;
            }
            value = (value & !(0xff << shift)) | u32::from(b) << shift;
            written |= 0xff << shift;
        }
        let control_written = written & 0xffff != 0;
        let clear = (value >> 16) as u16 & (written >> 16) as u16 & SLTSTA_EVENTS;
        self.edge(|s| {
            s.events &= !clear;
            if control_written {
                s.control = value as u16 & SLTCTL_WRITABLE;
                s.events |= SLTSTA_CC;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What Linux's pciehp writes to enable notification on a slot with a button.
    const PCIEHP_ENABLE: u16 = SLTCTL_DLLSCE | SLTCTL_ABPE | SLTCTL_HPIE | SLTCTL_CCIE;

    fn write_control(s: &mut HotplugSlot, v: u16) -> bool {
        s.write(0, &v.to_le_bytes())
    }

    fn clear_status(s: &mut HotplugSlot, bits: u16) -> bool {
        s.write(2, &bits.to_le_bytes())
    }

    /// Sets `mask` bits of Slot Control to `value` as a guest read-modify-write does.
    fn rmw(s: &mut HotplugSlot, mask: u16, value: u16) -> bool {
        let v = (s.control() & !mask) | value;
        write_control(s, v)
    }

    #[test]
    fn capabilities_advertise_a_button_slot_without_mrl() {
        let s = HotplugSlot::new(3, false);
        let caps = s.capabilities();
        assert_eq!(
            caps & 0x7f,
            SLTCAP_ABP | SLTCAP_PCP | SLTCAP_AIP | SLTCAP_PIP | SLTCAP_HPC
        );
        assert_eq!(caps & (1 << 2), 0, "no MRL sensor");
        assert_eq!(caps & (1 << 17), 0, "no interlock");
        assert_eq!(caps & (1 << 18), 0, "command completed supported");
        assert_eq!(caps >> 19, 3, "physical slot number");
        assert_ne!(HotplugSlot::new(3, true).capabilities() & SLTCAP_HPS, 0);
        assert!(!s.powered() && !s.present() && !s.link_active());
        assert_eq!(s.control() & SLTCTL_PIC, SLTCTL_PWR_IND_OFF);
    }

    #[test]
    fn command_completed_on_every_control_write() {
        let mut s = HotplugSlot::new(1, false);
        // Interrupts off: CC is set, no interrupt.
        assert!(!write_control(&mut s, SLTCTL_CCIE));
        assert_ne!(s.status() & SLTSTA_CC, 0);
        assert!(!clear_status(&mut s, SLTSTA_CC));
        assert_eq!(s.status() & SLTSTA_CC, 0, "write 1 to clear");
        // With HPIE and CCIE: interrupt on the edge only.
        assert!(write_control(&mut s, PCIEHP_ENABLE));
        assert!(
            !rmw(&mut s, SLTCTL_AIC, SLTCTL_ATTN_IND_OFF),
            "CC still set"
        );
        assert!(!clear_status(&mut s, SLTSTA_CC));
        assert!(rmw(&mut s, SLTCTL_AIC, SLTCTL_ATTN_IND_OFF));
        // A status-only write is not a command.
        assert!(!clear_status(&mut s, SLTSTA_CC));
        assert!(!clear_status(&mut s, 0));
        assert_eq!(s.status() & SLTSTA_CC, 0);
        // Reserved control bits do not stick; status reads back through a dword write.
        s.write(0, &0xffff_0000u32.to_le_bytes());
        assert_eq!(s.control(), 0);
    }

    #[test]
    fn add_then_remove_as_pciehp_drives_it() {
        let mut s = HotplugSlot::new(1, false);
        assert!(!s.hotplug_enabled());
        write_control(&mut s, PCIEHP_ENABLE | SLTCTL_PCC | SLTCTL_PWR_IND_OFF);
        clear_status(&mut s, SLTSTA_CC);
        assert!(s.hotplug_enabled() && s.button_enabled() && !s.presence_enabled());

        // VMM: card in (PDC not enabled by pciehp with a button: no interrupt), button.
        assert!(!s.insert());
        assert!(s.present() && !s.link_active(), "not powered yet");
        assert!(s.press_button());
        assert!(!s.press_button(), "still pending: no new edge");
        // Guest: reads and clears the events, blinks the power indicator.
        assert_eq!(s.status(), SLTSTA_PDS | SLTSTA_ABP | SLTSTA_PDC);
        assert!(!clear_status(&mut s, SLTSTA_ABP | SLTSTA_PDC));
        assert!(rmw(&mut s, SLTCTL_PIC, SLTCTL_PWR_IND_BLINK), "CC");
        clear_status(&mut s, SLTSTA_CC);
        // 5 s later: power on, link up, power indicator on.
        assert!(rmw(&mut s, SLTCTL_PCC, 0));
        assert!(s.link_active());
        assert_eq!(
            s.status() & SLTSTA_DLLSC,
            0,
            "no link event for the guest's power-on"
        );
        assert!(!s.powered_on(), "indicator still blinking");
        clear_status(&mut s, SLTSTA_CC);
        rmw(&mut s, SLTCTL_PIC, SLTCTL_PWR_IND_ON);
        assert!(s.powered_on());
        clear_status(&mut s, SLTSTA_CC);

        // Remove: button, guest powers off, VMM ejects.
        assert!(s.press_button());
        clear_status(&mut s, SLTSTA_ABP);
        assert!(!s.powered_off());
        rmw(&mut s, SLTCTL_PCC, SLTCTL_PCC);
        assert!(s.powered_off() && !s.link_active());
        clear_status(&mut s, SLTSTA_CC);
        assert!(!s.eject(), "PDC is not enabled");
        assert_eq!(s.status(), SLTSTA_PDC);
        assert_eq!(s.status() & SLTSTA_DLLSC, 0, "link was already down");
    }

    #[test]
    fn power_off_settles_when_the_indicator_goes_dark() {
        let mut s = HotplugSlot::new(1, false);
        write_control(&mut s, PCIEHP_ENABLE | SLTCTL_PWR_IND_ON);
        assert!(!s.powered_off_settled(), "powered");
        // pciehp cuts power first and darkens the indicator a second later.
        rmw(&mut s, SLTCTL_PCC, SLTCTL_PCC);
        assert!(s.powered_off() && !s.powered_off_settled());
        rmw(&mut s, SLTCTL_PIC, SLTCTL_PWR_IND_OFF);
        assert!(s.powered_off_settled());
    }

    #[test]
    fn surprise_removal_takes_the_link_down() {
        let mut s = HotplugSlot::new(1, true);
        write_control(&mut s, PCIEHP_ENABLE | SLTCTL_PDCE | SLTCTL_PWR_IND_ON);
        clear_status(&mut s, SLTSTA_CC);
        assert!(s.presence_enabled());
        s.insert();
        clear_status(&mut s, SLTSTA_PDC);
        assert!(s.link_active());
        assert!(s.eject());
        assert_eq!(s.status(), SLTSTA_PDC | SLTSTA_DLLSC);
        assert!(!s.link_active());
        assert!(!s.eject(), "already gone");
    }

    #[test]
    fn enabling_with_events_pending_interrupts() {
        let mut s = HotplugSlot::new(1, false);
        s.insert();
        s.press_button();
        // The guest turns notification on late: the pending button press fires then.
        assert!(write_control(&mut s, SLTCTL_ABPE | SLTCTL_HPIE));
        // Byte writes to the high control byte and odd offsets do not panic.
        s.write(1, &[0x04]);
        assert!(!s.powered());
        s.write(3, &[0xff]);
        s.write(3, &[0xff, 0xff, 0xff]);
        assert_eq!(s.status() & SLTSTA_DLLSC, 0);
    }
}
