# Raw guest for `crius vm run --raw FILE --mode real`: 16-bit real mode.
# The VMM loads the file at guest 0x1000 and starts it with CS = DS = 0x100
# (segment base 0x1000) and IP = 0, so offsets here are offsets in the file.
# It writes "Hello from VM\n" to the serial port (0x3f8), then halts.
        .code16
        .text
        .globl _start
_start:
        mov     $0x3f8, %dx             # COM1 data register
        mov     $msg, %si               # DS:SI = message
1:      lodsb                           # AL = DS:[SI++]
        test    %al, %al
        jz      2f
        out     %al, (%dx)
        jmp     1b
2:      hlt
        jmp     2b
msg:    .asciz  "Hello from VM\n"
