#!/usr/bin/env python3
"""sip_ping.py HOST PORT TIMEOUT_S -- send one SIP OPTIONS over UDP; exit 0 on a 200."""
import os
import socket
import sys
import time

host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
lport = s.getsockname()[1]
tok = "%d%d" % (os.getpid(), int(time.time() * 1000))
msg = (
    "OPTIONS sip:%s:%d SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKping%s;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:ping@127.0.0.1>;tag=%s\r\n"
    "To: <sip:%s:%d>\r\n"
    "Call-ID: ping-%s\r\n"
    "CSeq: 1 OPTIONS\r\n"
    "Content-Length: 0\r\n\r\n" % (host, port, lport, tok, tok, host, port, tok)
)
s.sendto(msg.encode(), (host, port))
deadline = time.monotonic() + timeout
while True:
    left = deadline - time.monotonic()
    if left <= 0:
        sys.exit(1)
    s.settimeout(left)
    try:
        data, _ = s.recvfrom(65535)
    except (socket.timeout, OSError):
        sys.exit(1)
    first = data.split(b"\r\n", 1)[0].split()
    if len(first) >= 2 and first[0] == b"SIP/2.0" and first[1].isdigit():
        code = int(first[1])
        if code >= 200:
            sys.exit(0 if code == 200 else 1)
