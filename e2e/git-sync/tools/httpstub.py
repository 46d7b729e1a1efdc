#!/usr/bin/env python3
"""A scripted HTTP responder for the git-sync e2e cases (webhooks, askpass,
the GitHub App API), on loopback.

    httpstub.py --responses FILE --hits FILE [--port 0] [--port-file P]

Each request appends one line to --hits (method, path, the Gitsync-Hash and
Authorization headers) and is answered from --responses, re-read for every
request so that a case can change the answer while it runs. That file holds
one or more responses separated by lines of `---`; request N gets response
N modulo their number. A response is a status line (`200`, `503`), then the
body. Standard library only.
"""

import argparse
import http.server
import os
import sys
import threading

lock = threading.Lock()
count = [0]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    responses_file = None
    hits = None

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        with lock:
            n = count[0]
            count[0] += 1
            with open(self.responses_file, encoding="utf-8") as f:
                parts = f.read().split("\n---\n")
            with open(self.hits, "a", encoding="utf-8") as f:
                f.write(
                    "%s %s hash=%s auth=%s\n"
                    % (
                        self.command,
                        self.path,
                        self.headers.get("Gitsync-Hash", "-"),
                        self.headers.get("Authorization", "-").replace(" ", "_"),
                    )
                )
        status, _, body = parts[n % len(parts)].partition("\n")
        payload = body.encode()
        self.send_response(int(status.strip()))
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = answer
    do_POST = answer
    do_PUT = answer


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--responses", required=True)
    p.add_argument("--hits", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    a = p.parse_args()
    Handler.responses_file = a.responses
    Handler.hits = a.hits
    open(a.hits, "a").close()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    if a.port_file:
        tmp = a.port_file + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("%d\n" % server.server_address[1])
        os.rename(tmp, a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
