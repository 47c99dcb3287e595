#!/usr/bin/python3
"""UDP flood for the package scenario: `send ADDR PORT BYTES_PER_SEC SECONDS` paces 1000-byte
datagrams; `receive ADDR PORT SECONDS` counts what arrives and prints `datagrams seconds`.
Bounded in time: both stop by themselves."""
import socket
import sys
import time

PAYLOAD = 1000


def send(addr, port, rate, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    data = b"\0" * PAYLOAD
    start = time.monotonic()
    sent = 0
    while True:
        now = time.monotonic() - start
        if now >= seconds:
            break
        # Paced: never ahead of rate x elapsed.
        if sent * PAYLOAD > rate * now:
            time.sleep(0.0005)
            continue
        try:
            sock.sendto(data, (addr, port))
        except OSError:
            pass
        sent += 1
    print(sent)


def receive(addr, port, seconds):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((addr, port))
    sock.settimeout(0.2)
    deadline = time.monotonic() + seconds
    count = 0
    first = last = None
    while time.monotonic() < deadline:
        try:
            sock.recv(2048)
        except socket.timeout:
            continue
        now = time.monotonic()
        first = first or now
        last = now
        count += 1
    span = (last - first) if first and last else 0.0
    print(count, f"{span:.3f}")


if __name__ == "__main__":
    kind, addr, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "send":
        send(addr, port, float(sys.argv[4]), float(sys.argv[5]))
    else:
        receive(addr, port, float(sys.argv[4]))
