"""A loopback TCP port that must see no connection: it accepts, records and closes each one."""

from __future__ import annotations

import socket
import threading


class Listener:
    """Stands for a server (W&B's, an HTTP(S) proxy): ``connections`` holds (peer, request line)."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            conn.settimeout(2)
            try:
                first = conn.recv(200).split(b"\r\n")[0].decode("latin-1")  # the request line
            except OSError:
                first = ""
            self.connections.append((addr, first))
            conn.close()

    def close(self):
        self.sock.close()
