#!/usr/bin/env python3
"""Download benchmark: tarpool's S3 source next to a reference client (boto3's
managed transfer) against the same local moto server, in the same run.

    python3 tests/s3/bench.py path/to/tarpool [--big-mb 500] [--small 300] [--small-kb 64]

tarpool's figure is its `download` transition (from `tarpool audit --json`),
so image processing after the download is not counted. The big object and the
small objects are random bytes (not images): they fail classification after
being downloaded, which is fine for a download benchmark.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import boto3
from boto3.s3.transfer import TransferConfig

ap = argparse.ArgumentParser()
ap.add_argument("tarpool")
ap.add_argument("--big-mb", type=int, default=500)
ap.add_argument("--small", type=int, default=300)
ap.add_argument("--small-kb", type=int, default=64)
ap.add_argument("--source-options", default="")
a = ap.parse_args()

s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
endpoint = f"http://127.0.0.1:{port}"
env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_REGION="us-east-1",
           AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")
try:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.1)
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="bench", aws_secret_access_key="bench",
                      region_name="us-east-1")
    s3.create_bucket(Bucket="bench")
    big = os.urandom(a.big_mb << 20)
    s3.put_object(Bucket="bench", Key="big/images/big.tar", Body=big)
    del big
    for i in range(a.small):
        s3.put_object(Bucket="bench", Key=f"small/images/small/{i + 1}.tar", Body=os.urandom(a.small_kb << 10))

    def tarpool(prefix):
        with tempfile.TemporaryDirectory(prefix="tarpool-bench-") as d:
            src = f"s3://bench/{prefix}" + (f"?{a.source_options}" if a.source_options else "")
            t = time.time()
            subprocess.run([a.tarpool, "--state-dir", d, "run", "--once", "--source", src],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wall = time.time() - t
            name = "big" if prefix == "big" else "small"
            audit = json.loads(subprocess.run([a.tarpool, "--state-dir", d, "audit", name, "--json"],
                                              env=env, capture_output=True, check=True).stdout)
            dl = [t for t in audit["transitions"] if t["name"] == "download" and t["outcome"] == "ok"]
            assert dl, f"no successful download: {audit['transitions']}"
            secs = (dl[-1]["finished_at"] - dl[-1]["started_at"]) / 1000
            return secs, wall

    def reference_big():
        with tempfile.TemporaryDirectory(prefix="boto3-bench-") as d:
            t = time.time()
            s3.download_file("bench", "big/images/big.tar", os.path.join(d, "big"), Config=TransferConfig())
            with open(os.path.join(d, "big"), "rb") as f:
                os.fsync(f.fileno())
            return time.time() - t

    def reference_small():
        with tempfile.TemporaryDirectory(prefix="boto3-bench-") as d:
            t = time.time()
            for i in range(a.small):
                p = os.path.join(d, str(i))
                s3.download_file("bench", f"small/images/small/{i + 1}.tar", p)
            return time.time() - t

    big_mb = a.big_mb
    small_mb = a.small * a.small_kb / 1024
    tb, tbw = tarpool("big")
    rb = reference_big()
    ts, tsw = tarpool("small")
    rs = reference_small()
    print(f"big object {big_mb} MiB:   tarpool {big_mb / tb:8.1f} MiB/s ({tb:.2f} s download step, {tbw:.2f} s whole run)"
          f" | boto3 {big_mb / rb:8.1f} MiB/s ({rb:.2f} s)")
    print(f"{a.small} objects of {a.small_kb} KiB: tarpool {a.small / ts:8.1f} obj/s ({ts:.2f} s)"
          f" | boto3 {a.small / rs:8.1f} obj/s ({rs:.2f} s)   [{small_mb:.1f} MiB]")
finally:
    server.kill()
    server.wait()
