/*
 * Tiny test guest: Multiboot v1 header, 32-bit BSP entry, AP trampoline,
 * GDT and identity page tables. Everything after long mode is in guest.c.
 *
 * Assumes nothing about the loader's GDT or stack: loads its own GDT and
 * reloads every segment register before using memory through them.
 */
#include "layout.h"

#define MSR_EFER 0xC0000080
#define EFER_LME 0x100
#define CR4_PAE 0x20
#define CR0_PE_PG 0x80000001

/* Shared by the BSP and the APs: protected mode (paging off) -> long mode. */
.macro ENTER_LONG_MODE
    movl %cr4, %eax
    orl $CR4_PAE, %eax
    movl %eax, %cr4
    movl $pml4, %eax
    movl %eax, %cr3
    movl $MSR_EFER, %ecx
    rdmsr
    orl $EFER_LME, %eax
    wrmsr
    movl %cr0, %eax
    orl $CR0_PE_PG, %eax
    movl %eax, %cr0
.endm

.macro LOAD_DATA_SEGMENTS
    movw $SEL_DATA, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
.endm

    .section .multiboot, "a"
    .balign 4
    .long MULTIBOOT_HEADER_MAGIC
    .long MULTIBOOT_HEADER_FLAGS
    .long -(MULTIBOOT_HEADER_MAGIC + MULTIBOOT_HEADER_FLAGS)

/* ---- 32-bit code (runs from the image, paging off until ENTER_LONG_MODE) ---- */
    .section .text32, "ax"
    .code32
    .globl _start
_start:
    cli
    cld
    /* Save EAX/EBX before anything clobbers them; C reads them later. */
    movl %eax, mb_magic
    movl %ebx, mb_info
    lgdt gdt_ptr
    LOAD_DATA_SEGMENTS
    movl $bsp_stack_top, %esp
    ljmp $SEL_CODE32, $1f
1:  ENTER_LONG_MODE
    ljmp $SEL_CODE64, $bsp_entry64

/* APs arrive here from the real-mode trampoline, already on our GDT. */
ap_entry32:
    LOAD_DATA_SEGMENTS
    ENTER_LONG_MODE
    ljmp $SEL_CODE64, $ap_entry64

/* ---- 64-bit code ---- */
    .text
    .code64
bsp_entry64:
    LOAD_DATA_SEGMENTS
    movq $bsp_stack_top, %rsp
    movl mb_magic(%rip), %edi
    movl mb_info(%rip), %esi
    call guest_main
park:
    cli
    hlt
    jmp park

ap_entry64:
    LOAD_DATA_SEGMENTS
    /* Claim a stack slot; the C counter proves the stack and C code work. */
    movl $1, %eax
    lock xaddl %eax, ap_next_slot(%rip)
    cmpl $MAX_APS, %eax
    jae park
    incl %eax
    imull $AP_STACK_SIZE, %eax
    leaq ap_stacks(%rip), %rsp
    addq %rax, %rsp
    call ap_main
    jmp park

/*
 * Interrupt entry points (guest.c builds the IDT from them).
 * isr_stubs + 16 * v: vector v, unexpected. Pushes a dummy error code where
 * the CPU pushes none, then the vector, and calls unexpected_vector(vector,
 * error code, rip), which never returns.
 */
    .balign 16
    .globl isr_stubs
isr_stubs:
    .set v, 0
    .rept 256
    .balign 16
    .if !((v == 8) || ((v >= 10) && (v <= 14)) || (v == 17) || (v == 21) || (v == 29) || (v == 30))
    pushq $0
    .endif
    pushq $v
    jmp isr_unexpected
    .set v, v + 1
    .endr

isr_unexpected:
    movq (%rsp), %rdi
    movq 8(%rsp), %rsi
    movq 16(%rsp), %rdx
    andq $-16, %rsp
    call unexpected_vector
    jmp park

/* VEC_MSIX: count it, EOI. Touches no register but RAX (saved). */
    .globl isr_msix
isr_msix:
    pushq %rax
    incl msix_irqs(%rip)
    movq lapic_eoi_reg(%rip), %rax
    movl $0, (%rax)
    popq %rax
    iretq

/* VEC_TIMER: the LAPIC one-shot timer that bounds every wait. */
    .globl isr_timer
isr_timer:
    pushq %rax
    incl timer_irqs(%rip)
    movq lapic_eoi_reg(%rip), %rax
    movl $0, (%rax)
    popq %rax
    iretq

/* VEC_SPURIOUS (the LAPIC's spurious vector): no EOI, per the SDM. */
    .globl isr_spurious
isr_spurious:
    iretq

/* ---- AP real-mode trampoline, copied to TRAMP_ADDR by the BSP ---- */
    .section .tramp16, "a"
    .code16
tramp_start:
    cli
    xorw %ax, %ax
    movw %ax, %ds
    lgdtl TRAMP_ADDR + (tramp_gdt_ptr - tramp_start)
    movl %cr0, %eax
    orl $1, %eax
    movl %eax, %cr0
    ljmpl $SEL_CODE32, $ap_entry32
    .balign 8
tramp_gdt_ptr:
    .word gdt_end - gdt - 1
    .long gdt
    /* gas pads every code section (isr_stubs' .balign) with NOPs of the last .code mode. */
    .code64

/* ---- Data ---- */
    .data
    .balign 8
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* SEL_CODE64: L=1, accessed preset */
    .quad 0x00CF93000000FFFF    /* SEL_DATA: flat 4 GiB RW */
    .quad 0x00CF9B000000FFFF    /* SEL_CODE32: flat 4 GiB */
gdt_end:
    .balign 8
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt

/*
 * Identity map of the first 4 GiB with 2 MiB pages, built by the assembler
 * (no run-time loop: every instruction is expensive under the host emulator).
 * Everything from UC_START up (PCI BAR windows, ECAM, IOAPIC, xAPIC) is
 * uncached (PCD|PWT); the guest never uses RAM there.
 */
    .balign 4096
    .globl pml4
pml4:
    .quad pdpt + 0x3
    .fill 511, 8, 0
pdpt:
    .quad pd + 0x0003, pd + 0x1003, pd + 0x2003, pd + 0x3003
    .fill 508, 8, 0
pd:
    .set i, 0
    .rept 2048
    .if i >= (UC_START >> 21)
    .quad (i << 21) | 0x9B      /* P | RW | PWT | PCD | PS */
    .else
    .quad (i << 21) | 0x83      /* P | RW | PS */
    .endif
    .set i, i + 1
    .endr

    .bss
    .balign 4
    .globl mb_magic, mb_info
mb_magic:
    .skip 4
mb_info:
    .skip 4
    .balign 16
bsp_stack:
    .skip BSP_STACK_SIZE
bsp_stack_top:
    .balign 16
ap_stacks:
    .skip MAX_APS * AP_STACK_SIZE

    .section .note.GNU-stack, "", @progbits
