"""Addresses and ports of the multipath fake network: the client's two interfaces
(paths 0 and 1) and the server's two addresses."""

from __future__ import annotations

A0 = bytes([10, 0, 0, 1])  # client, interface c0 (path 0)
A1 = bytes([10, 0, 1, 1])  # client, interface c1 (path 1)
P0 = bytes([10, 9, 0, 2])  # server, main address (address ID 0)
P1 = bytes([10, 9, 1, 2])  # server, second address (announced with ADD_ADDR)
LOCAL_PORT = 40000
SERVER_PORT = 8080
