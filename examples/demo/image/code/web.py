"""Demo web service: serves HTTP on the listening socket lithos passes as fd 3."""

import os
import socket
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello from {os.environ['LITHOS_NAME']} (pid {os.getpid()})\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


class InheritedServer(HTTPServer):
    def server_bind(self) -> None:  # the socket is already bound and listening
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        pass


server = InheritedServer(("", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.server_bind()
print(f"{os.environ['LITHOS_NAME']}: serving on fd 3", flush=True)
server.serve_forever()
