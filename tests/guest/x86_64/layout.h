/* Memory layout and selectors shared by entry.S and guest.c. */
#ifndef TINY_GUEST_LAYOUT_H
#define TINY_GUEST_LAYOUT_H

/* AP real-mode entry page: SIPI vector 0x08 starts APs at 0x0800:0000. */
#define TRAMP_ADDR 0x8000
#define SIPI_VECTOR (TRAMP_ADDR >> 12)

/* GDT selectors (see gdt in entry.S). */
#define SEL_CODE64 0x08
#define SEL_DATA 0x10
#define SEL_CODE32 0x18

/* APs beyond MAX_APS get no stack and are parked uncounted. */
#define MAX_APS 63
#define AP_STACK_SIZE 1024
#define BSP_STACK_SIZE 16384

#define MULTIBOOT_HEADER_MAGIC 0x1BADB002
#define MULTIBOOT_BOOT_MAGIC 0x2BADB002
/* Only "please give me memory info" (bit 1): ELF, so no a.out kludge. */
#define MULTIBOOT_HEADER_FLAGS 0x00000002

/* Uncached from here to 4 GiB in the identity map (PCI windows, APICs). */
#define UC_START 0x80000000

/* Interrupt vectors (IDT built by guest.c from the entry points in entry.S). */
#define VEC_MSIX 0x40
#define VEC_TIMER 0x41
#define VEC_SPURIOUS 0xff

#endif
