# Raw guest for `crius vm run --raw FILE --mode long`: 64-bit code.
# The VMM sets up long mode itself (identity-mapped page tables, a GDT with a
# 64-bit code segment, CR0.PG, CR4.PAE, EFER.LME/LMA), loads the file at
# guest 0x100000 and jumps to its first byte. The program checks that it
# really runs 64-bit code (a 64-bit immediate survives a shift only in long
# mode: in 32-bit mode the REX.W prefix decodes as `dec %eax`), writes a line
# to the serial port (0x3f8) with RIP-relative addressing, then halts.
        .code64
        .text
        .globl _start
_start:
        mov     $0x3f8, %dx             # COM1 data register
        movabs  $0x1122334455667788, %rax
        shr     $56, %rax
        lea     msg(%rip), %rsi
        cmp     $0x11, %al
        je      1f
        lea     bad(%rip), %rsi
1:      lodsb                           # AL = [RSI++]
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      hlt
        jmp     2b
msg:    .asciz  "Hello from 64-bit long mode\n"
bad:    .asciz  "not in 64-bit mode\n"
