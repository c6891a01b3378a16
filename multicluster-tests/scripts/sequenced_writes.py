#!/usr/bin/python3
"""The write-order checker's writer, through libnbd (a real NBD client).

Writes sequence numbers 1, 2, 3, ... one at a time (each acknowledged
before the next is sent): write i fills 4 KiB block (i mod BLOCKS) with
the 8-byte big-endian i, repeated. After every acknowledged write it
prints the number (so a reader knows every acknowledged write), and stops
at the first error (the volume refused it) or after COUNT writes.

Usage: sequenced_writes.py URI BLOCKS COUNT
"""
import struct
import sys

import nbd

BLOCK = 4096


def main():
    uri, blocks, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    handle = nbd.NBD()
    handle.connect_uri(uri)
    for seq in range(1, count + 1):
        data = struct.pack(">Q", seq) * (BLOCK // 8)
        try:
            handle.pwrite(data, (seq % blocks) * BLOCK)
        except nbd.Error as err:
            print(f"refused {seq}: {err}", file=sys.stderr, flush=True)
            return
        print(seq, flush=True)
    handle.flush()


if __name__ == "__main__":
    main()
