#!/usr/bin/python3
"""Overlapping writes in flight at once, through libnbd (a real NBD client).

For each round and each of OFFSETS blocks of 64 KiB, issues 32 aio_pwrite
calls to the same offset with different fill bytes, waits for all of them,
then moves on; at the end, FLUSH. NBD leaves the order of overlapping
writes in flight to the server: any one of them may win, but every copy of
a replicated volume must end with the same one.

Usage: overlapping_writes.py URI OFFSETS ROUNDS
Prints the number of writes issued.
"""
import sys

import nbd

BLOCK = 64 * 1024
WRITERS = 32


def main():
    uri, offsets, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    handle = nbd.NBD()
    handle.connect_uri(uri)
    buffers = [nbd.Buffer.from_bytearray(bytearray([fill]) * BLOCK) for fill in range(1, WRITERS + 1)]
    issued = 0
    for round_idx in range(rounds):
        for block_idx in range(offsets):
            # Rotate which fill goes first, so no one fill is always issued last.
            order = buffers[round_idx % WRITERS:] + buffers[:round_idx % WRITERS]
            cookies = [handle.aio_pwrite(buffer, block_idx * BLOCK) for buffer in order]
            issued += len(cookies)
            while handle.aio_in_flight() > 0:
                handle.poll(-1)
            for cookie in cookies:
                # Raises if the server answered the write with an error.
                handle.aio_command_completed(cookie)
    handle.flush()
    handle.shutdown()
    print(issued)


if __name__ == "__main__":
    main()
