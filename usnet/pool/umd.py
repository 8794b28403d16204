"""User packet metadata (UMD): the per-packet record a client reads and writes.

One 16-byte record per packet, at `umd_offset + 16 * index` in the shared memfd:

    offset 0  u32 length     bytes of data in the packet
    offset 4  u16 headroom   where the data starts, from the start of the packet's buffer
    offset 6  u16 gso_size   0, or (flow TX) a TCP super-segment's segment payload for the device
    offset 8  u64 tag        the application's own (a timestamp, a sequence number)

A packet's buflets are fixed and contiguous: packet i's data area is
`buf_offset + i * buf_size * buflets`, `buf_size * buflets` bytes long. A packet
larger than one buflet (a 64 KiB packet over 2 KiB buflets) therefore spans
`ceil(length / buf_size)` consecutive buflets and reads as one memoryview.
The nexus never trusts a UMD record: it is client-writable memory.
"""

UMD_SIZE = 16
UMD_WORDS = UMD_SIZE // 4  # u32 words per record: length is word 0
