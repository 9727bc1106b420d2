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

static void put_u64(u64 v, u32 base)
{
    char buf[20];
    int n = 0;
    do {
        u32 d = (u32)(v % base);
        buf[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    while (n)
        serial_putc(buf[--n]);
}

/* %s, %u (u64), %x (u64): every numeric argument must be passed as u64. */
static void kprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    for (; *fmt; fmt++) {
        if (*fmt != '%' || !fmt[1]) {
            serial_putc(*fmt);
            continue;
        }
        switch (*++fmt) {
        case 's':
            serial_puts(va_arg(ap, const char *));
            break;
        case 'u':
            put_u64(va_arg(ap, u64), 10);
            break;
        case 'x':
            put_u64(va_arg(ap, u64), 16);
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

/* "exit=<decimal>" as a whole word of the cmdline; default 0. */
static u32 parse_exit_code(const char *s)
{
    for (u32 i = 0; s[i]; i++) {
        if ((i == 0 || s[i - 1] == ' ') && s[i] == 'e' && s[i + 1] == 'x' && s[i + 2] == 'i' &&
            s[i + 3] == 't' && s[i + 4] == '=') {
            u32 v = 0;
            for (const char *d = s + i + 5; *d >= '0' && *d <= '9'; d++)
                v = v * 10 + (u32)(*d - '0');
            return v;
        }
    }
    return 0;
}

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

/* Each AP lands here on its own stack (entry.S), checks in, and parks. */
__attribute__((noreturn)) void ap_main(void)
{
    u32 one = 1;
    __asm__ volatile("lock xaddl %0, %1" : "+r"(one), "+m"(ap_online) : : "memory");
    halt_forever();
}

/* Returns the number of CPUs online, including the BSP. */
static u32 start_aps(u32 expected_cpus)
{
    ap_next_slot = 0;
    ap_online = 0;

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

    u32 online = start_aps(cpus);
    kprintf("tiny-guest: cpus online=%u\n", (u64)online);
    if (online != cpus) {
        kprintf("tiny-guest: ERROR cpus online=%u but fw_cfg cpus=%u\n", (u64)online, (u64)cpus);
        code = EXIT_CPU_MISMATCH;
    }

    kprintf("tiny-guest: exit code=%u\n", (u64)code);
    outl(EXIT_PORT, code);
    halt_forever();
}
