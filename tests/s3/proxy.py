#!/usr/bin/env python3
"""A fault-injecting HTTP proxy for the S3 tests: sits between tarpool and the
S3 server on loopback, logs every request, and injects faults.

    proxy.py UPSTREAM_PORT LOG_FILE FAULTS_FILE

Prints its port on the first line of stdout. Each request is logged as
`METHOD PATH RANGE STATUS` on one line of LOG_FILE. FAULTS_FILE (read on every
request, may be absent) is a JSON list of rules:

    {"method": "GET", "contains": "images/adhoc/1.tar", "action": "500", "times": 1}

`contains` is matched against the request path (percent-encoded, with the
query). Actions: an HTTP status ("500", "503", "403", "404") answered with an
S3 XML error; "truncate" (headers with the full length, half the body, close);
"reset" (half the body, then a TCP reset); "stall" (half the body, then
silence for `seconds`, default 30). A rule applies to its first `times`
matching requests (default: all) after skipping the first `after` (default 0).
"""

import http.client
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = int(sys.argv[1])
LOG = sys.argv[2]
FAULTS = sys.argv[3]
lock = threading.Lock()
used = {}

CODES = {
    "403": ("AccessDenied", "Access Denied"),
    "404": ("NoSuchKey", "The specified key does not exist."),
    "500": ("InternalError", "We encountered an internal error. Please try again."),
    "503": ("SlowDown", "Please reduce your request rate."),
}
HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "upgrade", "te", "trailer"}


def pick_fault(method, path):
    try:
        with open(FAULTS) as f:
            rules = json.load(f)
    except (OSError, ValueError):
        return None
    with lock:
        for i, r in enumerate(rules):
            if r.get("method", method) != method or r.get("contains", "") not in path:
                continue
            key = (i, json.dumps(r, sort_keys=True))
            seen = used.get(key, 0)
            used[key] = seen + 1
            n = seen - r.get("after", 0)
            if n < 0 or ("times" in r and n >= r["times"]):
                continue
            return r
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def record(self, status):
        with lock, open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} {self.headers.get('Range', '-')} {status}\n")

    def forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        fault = pick_fault(self.command, self.path)
        action = fault["action"] if fault else None
        if action in CODES:
            code, msg = CODES[action]
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
                   f"<Message>{msg}</Message></Error>").encode()
            self.record(action)
            self.send_response(int(action))
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml) if self.command != "HEAD" else 0))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(xml)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        up = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=60)
        up.request(self.command, self.path, body=body, headers=headers)
        resp = up.getresponse()
        data = resp.read()
        up.close()
        self.record(f"{resp.status}{'/' + action if action else ''}")
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in HOP and k.lower() != "content-length":
                self.send_header(k, v)
        full = len(data) if self.command != "HEAD" else int(resp.getheader("Content-Length") or 0)
        self.send_header("Content-Length", str(full))
        self.end_headers()
        if self.command == "HEAD":
            return
        if action in ("truncate", "reset", "stall") and data:
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            if action == "stall":
                time.sleep(float(fault.get("seconds", 30)))
            elif action == "reset":
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR) if action != "reset" else None
            except OSError:
                pass
            self.connection.close()
            return
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = forward


def main():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
