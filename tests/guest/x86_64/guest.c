/*
 * Tiny x86_64 test guest, long-mode part (entry.S gets us here).
 *
 * It runs under the host's CPL0 instruction emulator, so: general-purpose
 * registers only, no libc, and as few instructions as practical. The
 * integration tests match the printed lines exactly: keep them stable.
 */
#include <stdarg.h>
#include <stdint.h>

#include "layout.h"

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define COM1 0x3f8
#define FW_CFG_SEL 0x510
#define FW_CFG_DATA 0x511
#define FW_CFG_SIGNATURE 0x0000
#define FW_CFG_RAM_SIZE 0x0003
#define FW_CFG_NB_CPUS 0x0005
#define EXIT_PORT 0xf4

#define EXIT_CPU_MISMATCH 0x71
#define EXIT_BAD_MAGIC 0x72
#define EXIT_UNEXPECTED_VECTOR 0x73
#define EXIT_PCI_FAILED 0x74

#define MSR_APIC_BASE 0x1b
#define APIC_BASE_ENABLE (1u << 11)
#define LAPIC_SVR 0x0f0
#define LAPIC_ICR_LO 0x300
#define LAPIC_ICR_HI 0x310
#define ICR_BUSY (1u << 12)
/* Destination shorthand "all excluding self", level assert. */
#define ICR_INIT_ALL_BUT_SELF 0x000C4500
#define ICR_SIPI_ALL_BUT_SELF (0x000C4600 | SIPI_VECTOR)

/*
 * Delays in TSC ticks. The TSC rate is unknown (1-4 GHz typical), so these
 * are generous; the AP wait ends as soon as all expected APs checked in.
 */
#define TSC_INIT_DELAY 10000000ull      /* >= 10 ms wanted after INIT at <= 1 GHz */
#define TSC_SIPI_DELAY 1000000ull       /* >= 200 us between SIPIs */
#define TSC_AP_TIMEOUT 10000000000ull   /* 2.5-10 s */
#define TSC_SETTLE 20000000ull          /* grace to notice more APs than expected */
#define AP_WAIT_MAX_SPINS 400000000ull  /* backstop if the TSC does not move */

/* Defined in entry.S. */
extern u32 mb_magic, mb_info;
extern const u8 tramp16_start[], tramp16_end[];

/* Written by the APs (entry.S and ap_main); zeroed by the BSP before SIPI. */
volatile u32 ap_next_slot;
volatile u32 ap_online;

/* ---- port I/O, MSRs, TSC ---- */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port)
{
    u8 v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u32 inl(u16 port)
{
    u32 v;
    __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline u64 rdmsr(u32 msr)
{
    u32 lo, hi;
    __asm__ volatile("rdmsr" : "=a"(lo), "=d"(hi) : "c"(msr));
    return ((u64)hi << 32) | lo;
}

static inline void wrmsr(u32 msr, u64 v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((u32)v), "d"((u32)(v >> 32)));
}

static inline u64 rdtsc(void)
{
    u32 lo, hi;
    __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
    return ((u64)hi << 32) | lo;
}

static void tsc_delay(u64 ticks)
{
    u64 start = rdtsc();
    while (rdtsc() - start < ticks)
        ;
}

static __attribute__((noreturn)) void halt_forever(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* ---- serial (16550 at COM1, polled) ---- */

static void serial_init(void)
{
    outb(COM1 + 1, 0x00); /* no interrupts */
    outb(COM1 + 3, 0x80); /* DLAB */
    outb(COM1 + 0, 0x01); /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1 */
    outb(COM1 + 2, 0xc7); /* FIFO on, cleared */
    outb(COM1 + 4, 0x03); /* DTR | RTS, no OUT2: we never take interrupts */
}

static void serial_putc(char c)
{
    /* Bounded: a missing UART reads 0xff (THRE set) anyway. */
    for (u32 n = 0; n < 100000 && !(inb(COM1 + 5) & 0x20); n++)
        ;
    outb(COM1, (u8)c);
}

static void serial_puts(const char *s)
{
    while (*s)
        serial_putc(*s++);
}

/* At least `width` digits, zero-padded. */
static void put_u64(u64 v, u32 base, u32 width)
{
    char buf[24];
    u32 n = 0;
    do {
        u32 d = (u32)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n < width && n < sizeof(buf))
        buf[n++] = '0';
    while (n)
        serial_putc(buf[--n]);
}

/*
 * %s, %u (u64), %x (u64), with an optional one-digit zero-padded width
 * (%4x): every numeric argument must be passed as u64.
 */
static void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%' || !fmt[1]) {
            serial_putc(*fmt);
            continue;
        }
        u32 width = 0;
        if (fmt[1] >= '1' && fmt[1] <= '9' && fmt[2]) {
            width = (u32)(fmt[1] - '0');
            fmt++;
        }
        switch (*++fmt) {
        case 's':
            serial_puts(va_arg(ap, const char *));
            break;
        case 'u':
            put_u64(va_arg(ap, u64), 10, width);
            break;
        case 'x':
            put_u64(va_arg(ap, u64), 16, width);
            break;
        default:
            serial_putc('%');
            serial_putc(*fmt);
        }
    }
    va_end(ap);
}

/* ---- Multiboot v1 ---- */

struct mb_info {
    u32 flags;
    u32 mem_lower, mem_upper;
    u32 boot_device;
    u32 cmdline;
    u32 mods_count, mods_addr;
    u32 syms[4];
    u32 mmap_length, mmap_addr;
};

#define MB_INFO_MEM (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP (1u << 6)

struct mb_mmap_entry {
    u32 size; /* of the rest of the entry */
    u64 base, len;
    u32 type;
} __attribute__((packed));

/* What we keep from the loader's info, copied before low memory is touched. */
static struct {
    int magic_ok, have_mem, have_mmap;
    u64 mem_lower, mem_upper, mmap_ram;
    char cmdline[256];
} boot;

static void read_multiboot(u32 magic, u32 info_addr)
{
    /* Explicit, so a loader that skips zeroing .bss cannot confuse us. */
    boot.have_mem = boot.have_mmap = 0;
    boot.mmap_ram = 0;
    boot.cmdline[0] = 0;
    boot.magic_ok = magic == MULTIBOOT_BOOT_MAGIC;
    if (!boot.magic_ok || !info_addr)
        return;
    const struct mb_info *mi = (const struct mb_info *)(uintptr_t)info_addr;
    u32 flags = mi->flags;

    if (flags & MB_INFO_MEM) {
        boot.have_mem = 1;
        boot.mem_lower = mi->mem_lower;
        boot.mem_upper = mi->mem_upper;
    }
    if ((flags & MB_INFO_CMDLINE) && mi->cmdline) {
        const char *s = (const char *)(uintptr_t)mi->cmdline;
        u32 n = 0;
        while (s[n] && n < sizeof(boot.cmdline) - 1) {
            boot.cmdline[n] = s[n];
            n++;
        }
        boot.cmdline[n] = 0;
    }
    if (flags & MB_INFO_MMAP) {
        boot.have_mmap = 1;
        uintptr_t p = mi->mmap_addr, end = p + mi->mmap_length;
        /* Bounded walk: a bad size field must not loop us forever. */
        for (u32 i = 0; i < 1024 && p + sizeof(struct mb_mmap_entry) <= end; i++) {
            const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)p;
            if (e->size < sizeof(struct mb_mmap_entry) - 4)
                break;
            if (e->type == 1)
                boot.mmap_ram += e->len;
            p += (uintptr_t)e->size + 4;
        }
    }
}

/* "<key>=<decimal>" as a whole word of the cmdline; `dflt` if absent. */
static u32 parse_u32_param(const char *s, const char *key, u32 dflt)
{
    for (u32 i = 0; s[i]; i++) {
        if (i != 0 && s[i - 1] != ' ')
            continue;
        u32 k = 0;
        while (key[k] && s[i + k] == key[k])
            k++;
        if (key[k] || s[i + k] != '=')
            continue;
        u32 v = 0;
        for (const char *d = s + i + k + 1; *d >= '0' && *d <= '9'; d++)
            v = v * 10 + (u32)(*d - '0');
        return v;
    }
    return dflt;
}

/* "exit=<decimal>" as a whole word of the cmdline; default 0. */
static u32 parse_exit_code(const char *s) { return parse_u32_param(s, "exit", 0); }

/* ---- fw_cfg (legacy I/O ports) ---- */

static void fw_cfg_read(u16 key, u8 *buf, u32 len)
{
    outw(FW_CFG_SEL, key);
    for (u32 i = 0; i < len; i++)
        buf[i] = inb(FW_CFG_DATA);
}

static u64 le_bytes(const u8 *b, u32 len)
{
    u64 v = 0;
    while (len--)
        v = (v << 8) | b[len];
    return v;
}

/* ---- SMP bring-up ---- */

static inline u32 lapic_read(uintptr_t base, u32 reg) { return *(volatile u32 *)(base + reg); }
static inline void lapic_write(uintptr_t base, u32 reg, u32 v) { *(volatile u32 *)(base + reg) = v; }

static void lapic_ipi(uintptr_t base, u32 icr_lo)
{
    lapic_write(base, LAPIC_ICR_HI, 0);
    lapic_write(base, LAPIC_ICR_LO, icr_lo);
    for (u32 n = 0; n < 100000 && (lapic_read(base, LAPIC_ICR_LO) & ICR_BUSY); n++)
        ;
}

/* The race (cmdline race=N): every CPU takes N tickets from one shared counter with lock
 * xadd and counts the tickets that do not follow its previous one, i.e. that another CPU
 * took in between. CPUs that truly run at the same time interleave on a large share of
 * tickets; CPUs time-sliced on one host core only at the few switches between slices. */
volatile u32 race_iters;  /* set by the BSP before SIPI */
volatile u32 race_go;     /* the BSP's start signal, once every AP is in */
volatile u32 race_ticket;
volatile u32 race_interleaved;
volatile u32 race_done;

static u32 race_run(u32 iters)
{
    u32 seen = 0, last = 0;
    for (u32 i = 0; i < iters; i++) {
        u32 t = 1;
        __asm__ volatile("lock xaddl %0, %1" : "+r"(t), "+m"(race_ticket) : : "memory");
        if (i > 0 && t != last + 1)
            seen++;
        last = t;
    }
    return seen;
}

/* Each AP lands here on its own stack (entry.S), checks in, runs the race if asked, and
 * parks. */
__attribute__((noreturn)) void ap_main(void)
{
    u32 one = 1;
    __asm__ volatile("lock xaddl %0, %1" : "+r"(one), "+m"(ap_online) : : "memory");
    u32 iters = race_iters;
    if (iters) {
        while (!race_go)
            ;
        u32 seen = race_run(iters);
        __asm__ volatile("lock xaddl %0, %1" : "+r"(seen), "+m"(race_interleaved) : : "memory");
        one = 1;
        __asm__ volatile("lock xaddl %0, %1" : "+r"(one), "+m"(race_done) : : "memory");
    }
    halt_forever();
}

/* Returns the number of CPUs online, including the BSP. */
static u32 start_aps(u32 expected_cpus, u32 race)
{
    ap_next_slot = 0;
    ap_online = 0;
    race_iters = race;
    race_go = 0;
    race_ticket = 0;
    race_interleaved = 0;
    race_done = 0;

    /* The only low-memory write: the trampoline page. */
    volatile u8 *dst = (volatile u8 *)TRAMP_ADDR;
    for (const u8 *s = tramp16_start; s < tramp16_end; s++)
        *dst++ = *s;

    u64 apic_base_msr = rdmsr(MSR_APIC_BASE);
    if (!(apic_base_msr & APIC_BASE_ENABLE))
        wrmsr(MSR_APIC_BASE, apic_base_msr | APIC_BASE_ENABLE);
    uintptr_t lapic = (uintptr_t)(apic_base_msr & 0xfffff000u);
    lapic_write(lapic, LAPIC_SVR, (lapic_read(lapic, LAPIC_SVR) & ~0xffu) | 0x1ff);

    u32 want_aps = expected_cpus - 1;
    lapic_ipi(lapic, ICR_INIT_ALL_BUT_SELF);
    tsc_delay(TSC_INIT_DELAY);
    lapic_ipi(lapic, ICR_SIPI_ALL_BUT_SELF);
    tsc_delay(TSC_SIPI_DELAY);
    if (ap_online < want_aps) {
        lapic_ipi(lapic, ICR_SIPI_ALL_BUT_SELF);
        tsc_delay(TSC_SIPI_DELAY);
    }

    u64 start = rdtsc();
    for (u64 n = 0; n < AP_WAIT_MAX_SPINS && ap_online < want_aps; n++)
        if (rdtsc() - start > TSC_AP_TIMEOUT)
            break;
    tsc_delay(TSC_SETTLE);
    return 1 + ap_online;
}

/* ---- interrupts: IDT, LAPIC timer as a timeout ---- */

#define LAPIC_ID 0x020
#define LAPIC_EOI 0x0b0
#define LAPIC_LVT_TIMER 0x320
#define LAPIC_TIMER_INIT 0x380
#define LAPIC_TIMER_DIV 0x3e0
#define LAPIC_TIMER_DIV_1 0xb

/* Timeouts in LAPIC timer ticks at divide-by-1: 1 ns each under KVM and QEMU. */
#define WAIT_TIMEOUT 2000000000u  /* 2 s for a request to complete */
#define MASK_WINDOW 20000000u     /* 20 ms in which a masked vector must stay quiet */
#define TSC_POLL_TIMEOUT 10000000000ull
#define POLL_MAX_SPINS 20000000u

/* Defined in entry.S. */
extern const u8 isr_stubs[];
extern void isr_msix(void), isr_timer(void), isr_spurious(void);

/* Read and written by the handlers in entry.S. */
volatile u32 msix_irqs;
volatile u32 timer_irqs;
u64 lapic_eoi_reg;

static uintptr_t lapic_base;

struct idt_gate {
    u16 off_lo, sel;
    u8 ist, attr;
    u16 off_mid;
    u32 off_hi, zero;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));

static void idt_set(u32 v, uintptr_t handler)
{
    idt[v].off_lo = (u16)handler;
    idt[v].sel = SEL_CODE64;
    idt[v].ist = 0;
    idt[v].attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
    idt[v].off_mid = (u16)(handler >> 16);
    idt[v].off_hi = (u32)(handler >> 32);
    idt[v].zero = 0;
}

static void idt_install(void)
{
    for (u32 v = 0; v < 256; v++)
        idt_set(v, (uintptr_t)isr_stubs + 16 * v);
    idt_set(VEC_MSIX, (uintptr_t)isr_msix);
    idt_set(VEC_TIMER, (uintptr_t)isr_timer);
    idt_set(VEC_SPURIOUS, (uintptr_t)isr_spurious);
    struct {
        u16 limit;
        u64 base;
    } __attribute__((packed)) ptr = {sizeof(idt) - 1, (u64)(uintptr_t)idt};
    __asm__ volatile("lidt %0" : : "m"(ptr) : "memory");
}

/* Called by entry.S for any vector without a handler of its own. */
__attribute__((noreturn)) void unexpected_vector(u64 vector, u64 error, u64 rip)
{
    kprintf("tiny-guest: ERROR unexpected vector 0x%x error=0x%x rip=0x%x\n", vector, error, rip);
    kprintf("tiny-guest: exit code=%u\n", (u64)EXIT_UNEXPECTED_VECTOR);
    outl(EXIT_PORT, EXIT_UNEXPECTED_VECTOR);
    halt_forever();
}

static inline void lapic_w(u32 reg, u32 v) { *(volatile u32 *)(lapic_base + reg) = v; }
static inline u32 lapic_r(u32 reg) { return *(volatile u32 *)(lapic_base + reg); }

static void interrupts_init(void)
{
    /* Nothing from the 8259s (firmware may have left the PIT ticking). */
    outb(0x21, 0xff);
    outb(0xa1, 0xff);
    u64 apic_base_msr = rdmsr(MSR_APIC_BASE);
    lapic_base = (uintptr_t)(apic_base_msr & 0xfffff000u);
    lapic_eoi_reg = lapic_base + LAPIC_EOI;
    lapic_w(LAPIC_TIMER_INIT, 0);
    lapic_w(LAPIC_TIMER_DIV, LAPIC_TIMER_DIV_1);
    lapic_w(LAPIC_LVT_TIMER, VEC_TIMER); /* one-shot, unmasked */
    msix_irqs = 0;
    timer_irqs = 0;
    idt_install();
}

/*
 * Halts with interrupts enabled until at least `irqs` MSI-X interrupts have
 * been counted and *used_idx == used_want, or until the LAPIC timer fires
 * after `timeout` ticks. Interrupts are off again on return. 1 if the
 * condition was met.
 */
static int wait_irq(u32 irqs, const volatile u16 *used_idx, u16 used_want, u32 timeout)
{
    u32 timer_start = timer_irqs;
    int ok;
    lapic_w(LAPIC_TIMER_INIT, timeout);
    for (;;) {
        if (msix_irqs >= irqs && *used_idx == used_want) {
            ok = 1;
            break;
        }
        if (timer_irqs != timer_start) {
            ok = 0;
            break;
        }
        /* STI's one-instruction shadow: nothing is taken before HLT. */
        __asm__ volatile("sti; hlt; cli" : : : "memory");
    }
    lapic_w(LAPIC_TIMER_INIT, 0);
    return ok;
}

/* ---- PCI (configuration mechanism #1, bus 0) ---- */

#define PCI_CFG_ADDR 0xcf8
#define PCI_CFG_DATA 0xcfc
#define PCI_COMMAND 0x04
#define PCI_COMMAND_MEMORY 0x2
#define PCI_COMMAND_MASTER 0x4
#define PCI_STATUS_CAP_LIST (1u << 20) /* in the dword at 0x04 */
#define PCI_HEADER_TYPE 0x0c           /* byte 2 of that dword */
#define PCI_BAR0 0x10
#define PCI_CAP_PTR 0x34
#define PCI_CAP_ID_VNDR 0x09
#define PCI_CAP_ID_MSIX 0x11
#define MSIX_CTRL_ENABLE 0x8000
#define MSIX_CTRL_MASKALL 0x4000

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_RNG_DEVICE 0x1044

static inline u32 pci_addr(u32 dev, u32 fn, u32 reg) { return 0x80000000u | dev << 11 | fn << 8 | (reg & 0xfc); }

static u32 pci_read32(u32 dev, u32 fn, u32 reg)
{
    outl(PCI_CFG_ADDR, pci_addr(dev, fn, reg));
    return inl(PCI_CFG_DATA);
}

static void pci_write16(u32 dev, u32 fn, u32 reg, u16 v)
{
    outl(PCI_CFG_ADDR, pci_addr(dev, fn, reg));
    outw((u16)(PCI_CFG_DATA + (reg & 2)), v);
}

static u16 pci_read16(u32 dev, u32 fn, u32 reg) { return (u16)(pci_read32(dev, fn, reg) >> (8 * (reg & 2))); }

/* Memory BAR `bir`'s address (64-bit BARs included); 0 if none or unassigned. */
static u64 pci_bar(u32 dev, u32 fn, u32 bir)
{
    if (bir > 5)
        return 0;
    u32 lo = pci_read32(dev, fn, PCI_BAR0 + 4 * bir);
    if (lo & 1)
        return 0; /* I/O BAR */
    u64 addr = lo & ~0xfu;
    if (((lo >> 1) & 3) == 2) {
        if (bir == 5)
            return 0;
        addr |= (u64)pci_read32(dev, fn, PCI_BAR0 + 4 * bir + 4) << 32;
    }
    return addr;
}

/* ---- MMIO (every BAR is below 4 GiB in the uncached part of the identity map) ---- */

static inline u8 mmio_r8(u64 a) { return *(volatile u8 *)(uintptr_t)a; }
static inline u16 mmio_r16(u64 a) { return *(volatile u16 *)(uintptr_t)a; }
static inline u32 mmio_r32(u64 a) { return *(volatile u32 *)(uintptr_t)a; }
static inline void mmio_w8(u64 a, u8 v) { *(volatile u8 *)(uintptr_t)a = v; }
static inline void mmio_w16(u64 a, u16 v) { *(volatile u16 *)(uintptr_t)a = v; }
static inline void mmio_w32(u64 a, u32 v) { *(volatile u32 *)(uintptr_t)a = v; }
/* Two halves, low first, as drivers do (a 64-bit field need not take 8-byte accesses). */
static inline void mmio_w64(u64 a, u64 v)
{
    mmio_w32(a, (u32)v);
    mmio_w32(a + 4, (u32)(v >> 32));
}

static inline int mmio_usable(u64 a, u64 len) { return a >= UC_START && len <= (1ull << 32) && a <= (1ull << 32) - len; }

/* ---- virtio-rng over virtio-pci (modern), one queue, MSI-X vector 0 ---- */

/* virtio_pci_common_cfg */
#define VC_DEVICE_FEATURE_SELECT 0x00
#define VC_DEVICE_FEATURE 0x04
#define VC_DRIVER_FEATURE_SELECT 0x08
#define VC_DRIVER_FEATURE 0x0c
#define VC_MSIX_CONFIG 0x10
#define VC_NUM_QUEUES 0x12
#define VC_DEVICE_STATUS 0x14
#define VC_QUEUE_SELECT 0x16
#define VC_QUEUE_SIZE 0x18
#define VC_QUEUE_MSIX_VECTOR 0x1a
#define VC_QUEUE_ENABLE 0x1c
#define VC_QUEUE_NOTIFY_OFF 0x1e
#define VC_QUEUE_DESC 0x20
#define VC_QUEUE_DRIVER 0x28
#define VC_QUEUE_DEVICE 0x30
#define VC_COMMON_LEN 0x38

#define VIRTIO_PCI_CAP_COMMON_CFG 1
#define VIRTIO_PCI_CAP_NOTIFY_CFG 2
#define VIRTIO_PCI_CAP_ISR_CFG 3

#define VIRTIO_STATUS_ACKNOWLEDGE 1
#define VIRTIO_STATUS_DRIVER 2
#define VIRTIO_STATUS_DRIVER_OK 4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40
#define VIRTIO_STATUS_FAILED 0x80
#define VIRTIO_F_VERSION_1_HI 1 /* feature bit 32: bit 0 of feature word 1 */
#define VIRTIO_MSI_NO_VECTOR 0xffff
#define VIRTQ_DESC_F_WRITE 2

#define RNG_QSIZE 8
#define RNG_BUF_LEN 64

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags, next;
};

struct virtq_avail {
    u16 flags, idx;
    u16 ring[RNG_QSIZE];
    u16 used_event;
};

struct virtq_used {
    u16 flags, idx;
    struct {
        u32 id, len;
    } ring[RNG_QSIZE];
    u16 avail_event;
};

/* The queue and its buffer, in .bss (identity-mapped guest RAM). */
static volatile struct {
    struct virtq_desc desc[RNG_QSIZE]; /* 16-byte aligned */
    struct virtq_avail avail;          /* 2-byte aligned */
    struct virtq_used used __attribute__((aligned(4096)));
    u8 buf[RNG_BUF_LEN] __attribute__((aligned(64)));
} rngq __attribute__((aligned(4096)));

struct virtio_dev {
    u32 dev, fn;
    u64 common, notify, isr;
    u32 notify_mult;
    u32 msix_cap, msix_vectors;
    u64 msix_table, msix_pba;
    u16 qsize, avail_idx, used_seen;
    u64 notify_addr;
};

static int fail(const char *what, u64 value)
{
    kprintf("tiny-guest: ERROR %s (0x%x)\n", what, value);
    return 1;
}

/* Finds the virtio areas and the MSI-X table from the capability list. */
static int virtio_parse_caps(struct virtio_dev *v)
{
    if (!(pci_read32(v->dev, v->fn, PCI_COMMAND) & PCI_STATUS_CAP_LIST))
        return fail("virtio-rng has no capability list", 0);
    u32 ptr = pci_read32(v->dev, v->fn, PCI_CAP_PTR) & 0xfc;
    for (u32 n = 0; n < 48 && ptr >= 0x40; n++) {
        u32 hdr = pci_read32(v->dev, v->fn, ptr);
        u32 id = hdr & 0xff;
        if (id == PCI_CAP_ID_VNDR) {
            u32 cfg_type = hdr >> 24;
            u32 bir = pci_read32(v->dev, v->fn, ptr + 4) & 0xff;
            u32 off = pci_read32(v->dev, v->fn, ptr + 8);
            u32 len = pci_read32(v->dev, v->fn, ptr + 12);
            u64 bar = pci_bar(v->dev, v->fn, bir);
            u64 *slot = cfg_type == VIRTIO_PCI_CAP_COMMON_CFG   ? &v->common
                        : cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG ? &v->notify
                        : cfg_type == VIRTIO_PCI_CAP_ISR_CFG    ? &v->isr
                                                                : 0;
            u32 need = cfg_type == VIRTIO_PCI_CAP_COMMON_CFG ? VC_COMMON_LEN : cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG ? 2 : 1;
            /* The first usable capability of each type wins (virtio 1.x 4.1.4). */
            if (slot && !*slot && bar && len >= need && mmio_usable(bar + off, len)) {
                *slot = bar + off;
                if (cfg_type == VIRTIO_PCI_CAP_NOTIFY_CFG)
                    v->notify_mult = pci_read32(v->dev, v->fn, ptr + 16);
            }
        } else if (id == PCI_CAP_ID_MSIX && !v->msix_cap) {
            v->msix_cap = ptr;
            v->msix_vectors = ((hdr >> 16) & 0x7ff) + 1;
            u32 table = pci_read32(v->dev, v->fn, ptr + 4);
            u32 pba = pci_read32(v->dev, v->fn, ptr + 8);
            u64 tbar = pci_bar(v->dev, v->fn, table & 7), pbar = pci_bar(v->dev, v->fn, pba & 7);
            if (tbar && mmio_usable(tbar + (table & ~7u), 16))
                v->msix_table = tbar + (table & ~7u);
            if (pbar && mmio_usable(pbar + (pba & ~7u), 4))
                v->msix_pba = pbar + (pba & ~7u);
        }
        ptr = (hdr >> 8) & 0xfc;
    }
    if (!v->common)
        return fail("virtio-rng: no usable common config capability", 0);
    if (!v->notify)
        return fail("virtio-rng: no usable notify capability", 0);
    if (!v->isr)
        return fail("virtio-rng: no usable ISR capability", 0);
    if (!v->msix_cap)
        return fail("virtio-rng: no MSI-X capability", 0);
    if (!v->msix_table || !v->msix_pba)
        return fail("virtio-rng: MSI-X table or PBA BAR unassigned or above 4 GiB", v->msix_table);
    return 0;
}

/* MSI-X entry 0 -> this CPU, vector VEC_MSIX, fixed, edge; then MSI-X on. */
static int msix_setup(struct virtio_dev *v)
{
    u32 apic_id = lapic_r(LAPIC_ID) >> 24;
    mmio_w32(v->msix_table + 0, 0xfee00000u | apic_id << 12);
    mmio_w32(v->msix_table + 4, 0);
    mmio_w32(v->msix_table + 8, VEC_MSIX);
    mmio_w32(v->msix_table + 12, 0);
    if (mmio_r32(v->msix_table + 8) != VEC_MSIX || (mmio_r32(v->msix_table + 12) & 1))
        return fail("MSI-X table entry 0 did not take", mmio_r32(v->msix_table + 12));
    u16 ctrl = pci_read16(v->dev, v->fn, v->msix_cap + 2);
    pci_write16(v->dev, v->fn, v->msix_cap + 2, (u16)((ctrl | MSIX_CTRL_ENABLE) & ~MSIX_CTRL_MASKALL));
    ctrl = pci_read16(v->dev, v->fn, v->msix_cap + 2);
    if ((ctrl & (MSIX_CTRL_ENABLE | MSIX_CTRL_MASKALL)) != MSIX_CTRL_ENABLE)
        return fail("MSI-X enable did not take", ctrl);
    return 0;
}

/* Device initialization, virtio 1.x 3.1.1: one queue, vector 0. */
static int virtio_rng_init(struct virtio_dev *v)
{
    u64 c = v->common;
    mmio_w8(c + VC_DEVICE_STATUS, 0);
    for (u32 n = 0; mmio_r8(c + VC_DEVICE_STATUS) != 0; n++)
        if (n > 1000)
            return fail("virtio-rng reset did not complete", mmio_r8(c + VC_DEVICE_STATUS));
    mmio_w8(c + VC_DEVICE_STATUS, VIRTIO_STATUS_ACKNOWLEDGE);
    mmio_w8(c + VC_DEVICE_STATUS, VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER);

    mmio_w32(c + VC_DEVICE_FEATURE_SELECT, 1);
    u32 hi = mmio_r32(c + VC_DEVICE_FEATURE);
    if (!(hi & VIRTIO_F_VERSION_1_HI))
        return fail("virtio-rng does not offer VIRTIO_F_VERSION_1", hi);
    mmio_w32(c + VC_DRIVER_FEATURE_SELECT, 0);
    mmio_w32(c + VC_DRIVER_FEATURE, 0);
    mmio_w32(c + VC_DRIVER_FEATURE_SELECT, 1);
    mmio_w32(c + VC_DRIVER_FEATURE, VIRTIO_F_VERSION_1_HI);
    u8 st = VIRTIO_STATUS_ACKNOWLEDGE | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK;
    mmio_w8(c + VC_DEVICE_STATUS, st);
    if (!(mmio_r8(c + VC_DEVICE_STATUS) & VIRTIO_STATUS_FEATURES_OK))
        return fail("virtio-rng refused FEATURES_OK", mmio_r8(c + VC_DEVICE_STATUS));

    if (mmio_r16(c + VC_NUM_QUEUES) < 1)
        return fail("virtio-rng has no queues", 0);
    mmio_w16(c + VC_QUEUE_SELECT, 0);
    u16 max = mmio_r16(c + VC_QUEUE_SIZE);
    if (max == 0)
        return fail("virtio-rng queue 0 unavailable", 0);
    u16 qsize = RNG_QSIZE;
    while (qsize > max)
        qsize >>= 1;
    v->qsize = qsize;
    mmio_w16(c + VC_QUEUE_SIZE, qsize);

    for (u32 i = 0; i < RNG_QSIZE; i++) {
        rngq.desc[i].addr = 0;
        rngq.desc[i].len = 0;
        rngq.desc[i].flags = 0;
        rngq.desc[i].next = 0;
        rngq.avail.ring[i] = 0;
        rngq.used.ring[i].id = 0;
        rngq.used.ring[i].len = 0;
    }
    rngq.avail.flags = 0;
    rngq.avail.idx = 0;
    rngq.avail.used_event = 0;
    rngq.used.flags = 0;
    rngq.used.idx = 0;
    rngq.used.avail_event = 0;
    v->avail_idx = v->used_seen = 0;
    /* The only descriptor: the whole buffer, device-writable. */
    rngq.desc[0].addr = (u64)(uintptr_t)rngq.buf;
    rngq.desc[0].len = RNG_BUF_LEN;
    rngq.desc[0].flags = VIRTQ_DESC_F_WRITE;

    mmio_w64(c + VC_QUEUE_DESC, (u64)(uintptr_t)rngq.desc);
    mmio_w64(c + VC_QUEUE_DRIVER, (u64)(uintptr_t)&rngq.avail);
    mmio_w64(c + VC_QUEUE_DEVICE, (u64)(uintptr_t)&rngq.used);
    mmio_w16(c + VC_MSIX_CONFIG, VIRTIO_MSI_NO_VECTOR);
    mmio_w16(c + VC_QUEUE_MSIX_VECTOR, 0);
    u16 vec = mmio_r16(c + VC_QUEUE_MSIX_VECTOR);
    if (vec != 0)
        return fail("virtio-rng refused MSI-X vector 0 for queue 0", vec);
    v->notify_addr = v->notify + (u64)mmio_r16(c + VC_QUEUE_NOTIFY_OFF) * v->notify_mult;
    mmio_w16(c + VC_QUEUE_ENABLE, 1);

    mmio_w8(c + VC_DEVICE_STATUS, st | VIRTIO_STATUS_DRIVER_OK);
    st = mmio_r8(c + VC_DEVICE_STATUS);
    if ((st & (VIRTIO_STATUS_NEEDS_RESET | VIRTIO_STATUS_FAILED)) || !(st & VIRTIO_STATUS_DRIVER_OK))
        return fail("virtio-rng did not accept DRIVER_OK", st);
    return 0;
}

/* Makes descriptor 0 available and notifies queue 0. */
static void rng_post(struct virtio_dev *v)
{
    rngq.avail.ring[v->avail_idx % v->qsize] = 0;
    rngq.avail.idx = ++v->avail_idx;
    mmio_w16(v->notify_addr, 0);
}

/* Takes the completed request; 0 and its length in *len if it is descriptor 0. */
static int rng_take(struct virtio_dev *v, u32 *len)
{
    u32 slot = v->used_seen++ % v->qsize;
    u32 id = rngq.used.ring[slot].id;
    *len = rngq.used.ring[slot].len;
    if (id != 0)
        return fail("virtio-rng used an unknown descriptor", id);
    if (*len > RNG_BUF_LEN)
        return fail("virtio-rng used length beyond the buffer", *len);
    return 0;
}

/* One request with the vector unmasked: interrupt and used ring must both move. */
static int rng_roundtrip(struct virtio_dev *v, u32 *len)
{
    u32 irqs = msix_irqs;
    rng_post(v);
    if (!wait_irq(irqs + 1, &rngq.used.idx, v->avail_idx, WAIT_TIMEOUT)) {
        kprintf("tiny-guest: ERROR virtio-rng request %u: irqs %u -> %u, used idx %u, want %u\n",
                (u64)v->avail_idx, (u64)irqs, (u64)msix_irqs, (u64)rngq.used.idx, (u64)v->avail_idx);
        return 1;
    }
    return rng_take(v, len);
}

/* Vector 0 masked: the request completes silently and pends; unmasking delivers it. */
static int msix_mask_test(struct virtio_dev *v)
{
    u64 ctl = v->msix_table + 12;
    mmio_w32(ctl, 1);
    u32 irqs = msix_irqs;
    rng_post(v);
    u64 start = rdtsc();
    for (u32 n = 0; rngq.used.idx != v->avail_idx; n++)
        if (n > POLL_MAX_SPINS || rdtsc() - start > TSC_POLL_TIMEOUT)
            return fail("masked: virtio-rng request did not complete", rngq.used.idx);
    u32 len;
    if (rng_take(v, &len))
        return 1;
    /* Give a wrongly delivered interrupt time to show up. */
    if (wait_irq(irqs + 1, &rngq.used.idx, v->avail_idx, MASK_WINDOW))
        return fail("masked MSI-X vector delivered an interrupt", msix_irqs - irqs);
    u32 pba = mmio_r32(v->msix_pba);
    if (!(pba & 1))
        return fail("masked MSI-X vector not pending in the PBA", pba);
    mmio_w32(ctl, 0);
    if (!wait_irq(irqs + 1, &rngq.used.idx, v->avail_idx, WAIT_TIMEOUT))
        return fail("pending MSI-X interrupt not delivered on unmask", msix_irqs - irqs);
    pba = mmio_r32(v->msix_pba);
    if (pba & 1)
        return fail("PBA bit still set after delivery", pba);
    if (msix_irqs != irqs + 1)
        return fail("unmask delivered more than one interrupt", msix_irqs - irqs);
    kprintf("tiny-guest: msix mask ok\n");
    return 0;
}

static int virtio_rng_test(struct virtio_dev *v, u32 loops)
{
    if (virtio_parse_caps(v))
        return 1;
    u32 cmd = pci_read16(v->dev, v->fn, PCI_COMMAND);
    pci_write16(v->dev, v->fn, PCI_COMMAND, (u16)(cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER));
    cmd = pci_read16(v->dev, v->fn, PCI_COMMAND);
    if ((cmd & (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)) != (PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER))
        return fail("virtio-rng command register did not take", cmd);

    interrupts_init();
    if (msix_setup(v) || virtio_rng_init(v))
        return 1;

    for (u32 i = 0; i < RNG_BUF_LEN; i++)
        rngq.buf[i] = 0;
    u32 irqs = msix_irqs, len;
    if (rng_roundtrip(v, &len))
        return 1;
    u32 nonzero = 0;
    for (u32 i = 0; i < len; i++)
        nonzero |= rngq.buf[i] != 0;
    kprintf("tiny-guest: virtio-rng msix irq=%u used_len=%u nonzero=%u\n", (u64)(msix_irqs - irqs),
            (u64)len, (u64)nonzero);

    irqs = msix_irqs;
    u64 start = rdtsc();
    for (u32 i = 0; i < loops; i++)
        if (rng_roundtrip(v, &len))
            return 1;
    u64 ticks = rdtsc() - start;
    kprintf("tiny-guest: virtio-rng loops=%u irqs=%u tsc_per_irq=%u\n", (u64)loops, (u64)(msix_irqs - irqs),
            loops ? ticks / loops : 0);

    return msix_mask_test(v);
}

/* ---- PCIe root ports with a hot-plug slot ---- */

#define PCI_CLASS_BRIDGE_PCI 0x0604
#define PCI_CAP_ID_MSI 0x05
#define PCI_CAP_ID_EXP 0x10
#define EXP_SLTCAP 0x14
#define EXP_SLTCTL 0x18 /* Slot Status in the upper half */
#define SLTCAP_ABP 0x01
#define SLTCAP_PCP 0x02
#define SLTCAP_HPC 0x40
/* What Linux's pciehp enables on a slot with a button: ABPE, CCIE, HPIE, DLLSCE; the
 * slot stays powered off (PCC) with both indicators off. */
#define SLTCTL_PCIEHP 0x17f1u
#define SLTSTA_CC 0x10u

static u32 pci_addr_bus(u32 bus, u32 dev, u32 fn, u32 reg) { return pci_addr(dev, fn, reg) | bus << 16; }

static void pci_write32(u32 dev, u32 fn, u32 reg, u32 v)
{
    outl(PCI_CFG_ADDR, pci_addr(dev, fn, reg));
    outl(PCI_CFG_DATA, v);
}

static u32 pci_find_cap(u32 dev, u32 id)
{
    if (!(pci_read32(dev, 0, PCI_COMMAND) & PCI_STATUS_CAP_LIST))
        return 0;
    u32 ptr = pci_read32(dev, 0, PCI_CAP_PTR) & 0xfc;
    for (u32 n = 0; ptr >= 0x40 && n < 48; n++) {
        u32 dw = pci_read32(dev, 0, ptr);
        if ((dw & 0xff) == id)
            return ptr;
        ptr = (dw >> 8) & 0xfc;
    }
    return 0;
}

/*
 * A root port's slot as pciehp sees it: a hot-plug capable slot with a button and a power
 * controller, an empty bus below, and a Slot Control write that completes with the port's
 * MSI. 0 if all went well, 1 after an ERROR line.
 */
static int hotplug_port_test(u32 dev)
{
    u32 exp = pci_find_cap(dev, PCI_CAP_ID_EXP);
    u32 msi = pci_find_cap(dev, PCI_CAP_ID_MSI);
    if (!exp || !msi) {
        kprintf("tiny-guest: ERROR bridge 00:%2x.0 has no PCIe or MSI capability\n", (u64)dev);
        return 1;
    }
    if (((pci_read32(dev, 0, exp) >> 20) & 0xf) != 4)
        return 0; /* not a root port */
    u32 sltcap = pci_read32(dev, 0, exp + EXP_SLTCAP);
    u32 want = SLTCAP_ABP | SLTCAP_PCP | SLTCAP_HPC;
    if ((sltcap & want) != want) {
        kprintf("tiny-guest: ERROR root port 00:%2x.0 slot caps 0x%x\n", (u64)dev, (u64)sltcap);
        return 1;
    }
    u32 bus = (pci_read32(dev, 0, 0x18) >> 8) & 0xff;
    outl(PCI_CFG_ADDR, pci_addr_bus(bus, 0, 0, 0));
    u32 below = inl(PCI_CFG_DATA);
    if (bus == 0 || below != 0xffffffffu) {
        kprintf("tiny-guest: ERROR root port 00:%2x.0 bus %u: 0x%x below an empty slot\n", (u64)dev,
                (u64)bus, (u64)below);
        return 1;
    }
    interrupts_init();
    u32 apic_id = lapic_r(LAPIC_ID) >> 24;
    pci_write32(dev, 0, msi + 4, 0xfee00000u | apic_id << 12);
    pci_write32(dev, 0, msi + 8, 0);
    pci_write32(dev, 0, msi + 12, VEC_MSIX);
    pci_write16(dev, 0, msi + 2, 1); /* MSI enable */
    static volatile u16 none;
    pci_write16(dev, 0, exp + EXP_SLTCTL, SLTCTL_PCIEHP);
    int irq = wait_irq(1, &none, 0, WAIT_TIMEOUT);
    u32 status = pci_read32(dev, 0, exp + EXP_SLTCTL) >> 16;
    pci_write16(dev, 0, exp + EXP_SLTCTL + 2, SLTSTA_CC);
    u32 cleared = !((pci_read32(dev, 0, exp + EXP_SLTCTL) >> 16) & SLTSTA_CC);
    kprintf("tiny-guest: hotplug port 00:%2x.0 bus=%u slot=%u cc=%u cleared=%u msi=%u\n", (u64)dev,
            (u64)bus, (u64)(sltcap >> 19), (u64)!!(status & SLTSTA_CC), (u64)cleared, (u64)irq);
    __asm__ volatile("cli");
    return !(irq && (status & SLTSTA_CC) && cleared);
}

/*
 * Lists bus 0 and, if there is a virtio-rng, drives it. 0 if all went well
 * (or there was nothing to drive), 1 after an ERROR line.
 */
static int pci_test(u32 rng_loops)
{
    struct {
        u8 dev, fn;
        u32 id;
    } found[64];
    u32 count = 0;
    for (u32 dev = 0; dev < 32; dev++) {
        for (u32 fn = 0; fn < 8 && count < 64; fn++) {
            u32 id = pci_read32(dev, fn, 0);
            if ((id & 0xffff) == 0xffff || (id & 0xffff) == 0) {
                if (fn == 0)
                    break;
                continue;
            }
            found[count].dev = (u8)dev;
            found[count].fn = (u8)fn;
            found[count].id = id;
            count++;
            if (fn == 0 && !(pci_read32(dev, 0, PCI_HEADER_TYPE) & 0x800000))
                break; /* single-function */
        }
    }
    kprintf("tiny-guest: pci devices=%u\n", (u64)count);
    int rng = -1;
    for (u32 i = 0; i < count; i++) {
        kprintf("tiny-guest: pci 00:%2x.%u %4x:%4x\n", (u64)found[i].dev, (u64)found[i].fn,
                (u64)(found[i].id & 0xffff), (u64)(found[i].id >> 16));
        if (rng < 0 && found[i].id == (VIRTIO_RNG_DEVICE << 16 | VIRTIO_VENDOR))
            rng = (int)i;
    }
    int port_failed = 0;
    for (u32 i = 0; i < count; i++) {
        if (found[i].fn == 0 && pci_read32(found[i].dev, 0, 0x08) >> 16 == PCI_CLASS_BRIDGE_PCI)
            port_failed |= hotplug_port_test(found[i].dev);
    }
    if (rng < 0)
        return port_failed;
    struct virtio_dev v = {0};
    v.dev = found[rng].dev;
    v.fn = found[rng].fn;
    int failed = virtio_rng_test(&v, rng_loops);
    __asm__ volatile("cli");
    return failed | port_failed;
}

/* ---- main ---- */

__attribute__((noreturn)) void guest_main(u32 magic, u32 info_addr)
{
    /* Copy the loader's info first: it lives in low memory we do not own. */
    read_multiboot(magic, info_addr);

    serial_init();
    kprintf("tiny-guest: hello\n");
    kprintf("tiny-guest: long mode ok\n");

    u32 code = parse_exit_code(boot.cmdline);
    if (!boot.magic_ok) {
        kprintf("tiny-guest: ERROR bad multiboot magic 0x%x\n", (u64)magic);
        code = EXIT_BAD_MAGIC;
    }

    kprintf("tiny-guest: cmdline=%s\n", boot.cmdline);
    if (boot.have_mem)
        kprintf("tiny-guest: multiboot mem_lower=%uK mem_upper=%uK\n", boot.mem_lower, boot.mem_upper);
    else
        kprintf("tiny-guest: multiboot mem=none\n");
    if (boot.have_mmap)
        kprintf("tiny-guest: mmap ram=%uM\n", boot.mmap_ram >> 20);
    else
        kprintf("tiny-guest: mmap ram=none\n");

    u32 cpus = 1;
    u8 buf[8];
    fw_cfg_read(FW_CFG_SIGNATURE, buf, 4);
    if (buf[0] == 'Q' && buf[1] == 'E' && buf[2] == 'M' && buf[3] == 'U') {
        fw_cfg_read(FW_CFG_RAM_SIZE, buf, 8);
        u64 ram = le_bytes(buf, 8);
        fw_cfg_read(FW_CFG_NB_CPUS, buf, 2);
        cpus = (u32)le_bytes(buf, 2);
        if (cpus == 0)
            cpus = 1;
        kprintf("tiny-guest: fw_cfg ram=%uM cpus=%u\n", ram >> 20, (u64)cpus);
    } else {
        kprintf("tiny-guest: fw_cfg absent\n");
    }

    u32 race = parse_u32_param(boot.cmdline, "race", 0);
    u32 online = start_aps(cpus, race);
    kprintf("tiny-guest: cpus online=%u\n", (u64)online);
    if (race && online > 1) {
        race_go = 1;
        u32 seen = race_run(race);
        __asm__ volatile("lock xaddl %0, %1" : "+r"(seen), "+m"(race_interleaved) : : "memory");
        u64 start = rdtsc();
        while (race_done < online - 1 && rdtsc() - start < TSC_AP_TIMEOUT * 6)
            ;
        kprintf("tiny-guest: race cpus=%u iters=%u finished=%u tickets=%u interleaved=%u\n",
                (u64)online, (u64)race, (u64)(race_done + 1), (u64)race_ticket,
                (u64)race_interleaved);
    }
    if (online != cpus) {
        kprintf("tiny-guest: ERROR cpus online=%u but fw_cfg cpus=%u\n", (u64)online, (u64)cpus);
        code = EXIT_CPU_MISMATCH;
    }

    if (pci_test(parse_u32_param(boot.cmdline, "rng_loops", 1)) && boot.magic_ok && online == cpus)
        code = EXIT_PCI_FAILED;

    /* tick=<N>: stay up, printing a numbered line every N million TSC ticks (about N ms
     * at 1 GHz), for tests of a VM that keeps running (API pause/resume). */
    u32 tick = parse_u32_param(boot.cmdline, "tick", 0);
    if (tick) {
        for (u64 n = 0;; n++) {
            kprintf("tiny-guest: tick %u\n", n);
            tsc_delay((u64)tick * 1000000ull);
        }
    }

    kprintf("tiny-guest: exit code=%u\n", (u64)code);
    /* "hold=1": stay running (halted) so a test can inspect the VMM's threads. */
    if (parse_u32_param(boot.cmdline, "hold", 0)) {
        kprintf("tiny-guest: holding\n");
        halt_forever();
    }
    outl(EXIT_PORT, code);
    halt_forever();
}
