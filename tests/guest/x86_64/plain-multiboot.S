/* The smallest multiboot v1 kernel, linked the plain way (`ld -m elf_i386 -Ttext 0x100000`,
 * no linker script): binutils 2.40 then puts the ELF and program headers in a read-only
 * LOAD segment at 0xff000, below 1 MiB. It writes 21 to the exit port, so the VMM exits
 * with status (21 << 1) | 1 = 43. */
    .text
    .align 4
    .long 0x1BADB002
    .long 0
    .long -0x1BADB002
    .globl _start
_start:
    mov $21, %eax
    mov $0xf4, %dx
    out %eax, %dx
1:  hlt
    jmp 1b
