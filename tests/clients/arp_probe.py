#!/usr/bin/env python3
"""Sends one ARP request for an address and prints, one per line, every MAC address
that answers within a second: a test of "exactly one host answers for the VIP".

usage: arp_probe.py INTERFACE OUR_IP TARGET_IP
"""
import socket
import struct
import sys
import time

iface, me, target = sys.argv[1:4]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((iface, 0))
mac = s.getsockname()[4]
req = (b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1)
       + mac + socket.inet_aton(me) + b"\x00" * 6 + socket.inet_aton(target))
s.send(req.ljust(60, b"\x00"))
s.settimeout(0.1)
seen = set()
end = time.time() + 1.0
while time.time() < end:
    try:
        f = s.recv(128)
    except OSError:
        continue
    if (len(f) >= 42 and f[12:14] == b"\x08\x06" and f[20:22] == b"\x00\x02"
            and f[28:32] == socket.inet_aton(target)):
        seen.add(f[22:28].hex(":"))
for m in sorted(seen):
    print(m)
