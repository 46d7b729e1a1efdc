#!/usr/bin/env python3
"""A Git host for tests: `git http-backend` behind HTTP basic auth, on loopback.

    git-http-server.py --root DIR [--address 127.0.0.1] [--port 0] [--user U --password-file F] [--port-file P]

Serves every repository below DIR over smart HTTP (fetch and push). With --user,
every request needs that user and the password in F (re-read per request, so a
test can rotate it); a wrong or missing one answers 401 with a WWW-Authenticate
challenge, as a Git host does. The bound port is printed on stdout as
`listening on ADDRESS:PORT` (and written to --port-file) once it accepts.
The images/git-server image packages it for the demos (--address 0.0.0.0).
Standard library only; the CGI glue is ours, the Git side is git's own.
"""

import argparse
import base64
import http.server
import os
import subprocess
import sys


def read_body(handler):
    """The request body, de-chunked: git sends large pushes chunked."""
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        parts = []
        while True:
            line = handler.rfile.readline().strip()
            size = int(line.split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline().strip():
                    pass
                break
            parts.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(parts)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root = None
    user = None
    password_file = None

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def authorized(self):
        if self.user is None:
            return True
        header = self.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            with open(self.password_file, encoding="utf-8") as f:
                expected = f.read().rstrip("\r\n")
        except (ValueError, OSError):
            return False
        return user == self.user and password == expected

    def refuse(self):
        body = b"authentication required\n"
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def cgi(self):
        body = read_body(self)
        if not self.authorized():
            self.refuse()
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": self.client_address[0],
            # http-backend enables receive-pack for authenticated users.
            "REMOTE_USER": self.user or "anonymous",
        }
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True)
        if out.stderr:
            sys.stderr.write(out.stderr.decode(errors="replace"))
        head, _, payload = out.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.stdout.partition(b"\n\n")
        status, headers = 200, []
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = cgi
    do_POST = cgi


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True)
    p.add_argument("--address", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--user")
    p.add_argument("--password-file")
    p.add_argument("--port-file")
    a = p.parse_args()
    if (a.user is None) != (a.password_file is None):
        p.error("--user and --password-file go together")
    Handler.root = os.path.abspath(a.root)
    Handler.user = a.user
    Handler.password_file = a.password_file
    server = http.server.ThreadingHTTPServer((a.address, a.port), Handler)
    port = server.server_address[1]
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("%d\n" % port)
        os.rename(tmp, a.port_file)
    print("listening on %s:%d" % (a.address, port), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
