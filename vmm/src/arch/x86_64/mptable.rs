//! Intel MultiProcessor Specification 1.4 tables, so a guest without ACPI (Linux with
//! `acpi=off` or no ACPI tables, as here) finds every vCPU, the IOAPIC and the ISA interrupt
//! wiring.
//!
//! The floating pointer and the configuration table live in the BIOS area at 0xF0000, which
//! Linux scans and the E820 map marks reserved, so the guest never reuses the memory.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{IOAPIC_START, LAPIC_START};

/// Where the tables go: the start of the BIOS ROM area, scanned by MP-aware kernels.
pub const MPTABLE_START: GuestAddress = GuestAddress(0xf_0000);
/// Room the tables may use (up to the end of the BIOS area).
const MPTABLE_MAX: usize = 0x1_0000;
/// Legacy ISA interrupts routed through the IOAPIC.
const ISA_IRQS: u8 = 16;
/// Most CPUs the table can name: LAPIC ids are 8 bits, and the IOAPIC takes the next id.
pub const MAX_CPUS: u32 = 254;

const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPUID signature stepping/model/family (family 6) and features (FPU, APIC) the entries claim.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

/// Errors building MP tables.
#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    /// Too many vCPUs for 8-bit APIC ids.
    #[error("{0} vCPUs do not fit in an MP table (at most {MAX_CPUS}); use fewer vCPUs")]
    TooManyCpus(u32),
    /// Guest RAM does not cover the BIOS area.
    #[error("cannot write the MP table at {0:#x}: guest RAM does not cover it")]
    Write(u64),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b))
        .wrapping_neg()
}

/// Builds the floating pointer and configuration table for `cpus` vCPUs, as the bytes to
/// place at [`MPTABLE_START`].
pub fn build(cpus: u32) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let table_addr = MPTABLE_START.0 as u32 + 16;
    let ioapic_id = cpus as u8; // first id after the LAPICs

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..cpus {
        let flags = CPU_ENABLED | if id == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[MP_PROCESSOR, id as u8, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START.raw_value() as u32).to_le_bytes());
    count += 1;
    for irq in 0..ISA_IRQS {
        // ISA IRQ n on IOAPIC pin n, matching KVM's default GSI routing.
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every LAPIC takes the PIC's ExtINT, LINT1 takes NMI (dest 0xff = all).
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table: Vec<u8> = Vec::new();
    table.extend_from_slice(b"PCMP");
    let len = (44 + entries.len()) as u16;
    table.extend_from_slice(&len.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"IOMMUFD ");
    table.extend_from_slice(b"VMM         ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START.raw_value() as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.extend_from_slice(&[0, 0]); // extended checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut fp: Vec<u8> = Vec::new();
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&table_addr.to_le_bytes());
    fp.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]); // length 1 (16 bytes), rev 1.4, checksum
    fp[10] = checksum(&fp);

    fp.extend_from_slice(&table);
    if fp.len() > MPTABLE_MAX {
        return Err(MptableError::TooManyCpus(cpus));
    }
    Ok(fp)
}

/// The most bytes the tables take at [`MPTABLE_START`] (for [`MAX_CPUS`] vCPUs): the area
/// the VMM owns there.
pub fn max_len() -> usize {
    build(MAX_CPUS).map_or(MPTABLE_MAX, |b| b.len())
}

/// Writes the MP tables for `cpus` vCPUs into guest memory.
pub fn setup_mptable(mem: &GuestMemoryMmap, cpus: u32) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, MPTABLE_START)
        .map_err(|_| MptableError::Write(MPTABLE_START.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn floating_pointer_and_table_checksum_to_zero() {
        for cpus in [1, 2, 64, MAX_CPUS] {
            let b = build(cpus).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[0..16]), 0);
            let addr = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            assert_eq!(addr, 0xf_0010);
            let t = &b[16..];
            assert_eq!(&t[0..4], b"PCMP");
            let len = u16::from_le_bytes([t[4], t[5]]) as usize;
            assert_eq!(len, t.len());
            assert_eq!(sum(t), 0);
            let count = u16::from_le_bytes([t[34], t[35]]) as u32;
            assert_eq!(count, cpus + 1 + 1 + 16 + 2);
            assert_eq!(
                u32::from_le_bytes([t[36], t[37], t[38], t[39]]),
                0xfee0_0000
            );
        }
    }

    #[test]
    fn processor_entries_name_each_cpu_and_the_bsp() {
        let b = build(3).unwrap();
        let e = &b[16 + 44..];
        for id in 0..3usize {
            let p = &e[id * 20..id * 20 + 20];
            assert_eq!(p[0], MP_PROCESSOR);
            assert_eq!(p[1] as usize, id);
            assert_eq!(p[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(p[3] & CPU_BOOTPROCESSOR != 0, id == 0);
        }
        let ioapic = &e[60 + 8..60 + 16];
        assert_eq!(ioapic[0], MP_IOAPIC);
        assert_eq!(ioapic[1], 3);
        assert_eq!(
            u32::from_le_bytes([ioapic[4], ioapic[5], ioapic[6], ioapic[7]]),
            0xfec0_0000
        );
    }

    #[test]
    fn cpu_count_limits() {
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
