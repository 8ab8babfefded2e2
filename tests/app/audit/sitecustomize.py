"""Loaded by the UI server under test (PYTHONPATH): records every attempt to reach a non-loopback
address (socket.connect, DNS lookups of other hosts) to $CAFE_AUDIT_LOG, one JSON line each."""

import ipaddress
import json
import os
import sys
import traceback

_LOG = os.environ.get("CAFE_AUDIT_LOG")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


def _local(host) -> bool:
    if host is None or host == "":
        return True  # bind-style wildcard lookups (passive)
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0]
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name other than localhost: a DNS lookup would leave the machine
    return ip.is_loopback or ip.is_unspecified


def _hook(event, args):
    if event == "socket.connect":
        sock, address = args
        if not isinstance(address, tuple):  # unix sockets
            return
        host = address[0]
    elif event == "socket.getaddrinfo":
        host = args[0]
    else:
        return
    if _local(host):
        return
    stack = "".join(traceback.format_stack(limit=12))
    with open(_LOG, "a") as f:
        f.write(json.dumps({"event": event, "host": str(host), "stack": stack}) + "\n")


if _LOG:
    sys.addaudithook(_hook)
    with open(_LOG + ".armed", "a") as f:  # proof for the test that the hook ran in the server
        f.write(f"{os.getpid()}\n")
