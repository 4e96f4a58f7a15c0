"""Headless-Chromium screenshots of a robustness report and of the MLflow UI, for the docs.

    python scripts/screenshots.py report runs/NAME/report/report.html docs/img/report-toy.png
    python scripts/screenshots.py mlflow --storage runs --task gsm8k --sweep NAME --out docs/img

`mlflow` starts the server `harness ui` starts, on 127.0.0.1 (a free port) over the sweep's store,
photographs what a fresh browser shows on opening the experiment's plain address, then the link
`harness run` prints (the sweep's trials, best first, and their chart view) and the compare view
of the sweep's trials, and stops the server by its process id. Chromium: $CHROMIUM, else chromium
on the PATH (Debian's is /usr/bin/chromium)."""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def browser() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("screenshots: no Chromium found: install Debian's chromium or set $CHROMIUM")
    return found


def shoot(url: str, png: Path, width=1400, height=900, wait_ms=15000):
    """One screenshot of url at width x height, after wait_ms of virtual time (pages that fetch)."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="screenshot-") as profile:
        subprocess.run([browser(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={png.resolve()}",
                        f"--window-size={width},{height}", f"--virtual-time-budget={wait_ms}", url],
                       capture_output=True, timeout=180, check=True)
    print(png)


def report(args):
    shoot(Path(args.html).resolve().as_uri(), Path(args.png), args.width, args.height, wait_ms=3000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(1)
    sys.exit(f"screenshots: {url} did not answer in {seconds} s")


def mlflow(args):
    from harness import tracking
    from harness.cli import ui_command
    uri = tracking.resolve_uri(args.tracking_uri, str(Path(args.storage).resolve()))
    mlf = tracking.client(uri)
    exp = mlf.get_experiment_by_name(args.task).experiment_id
    trials = mlf.search_runs([exp], filter_string=f"tags.`harness.sweep` = '{args.sweep}' and "
                             f"tags.`harness.kind` = 'trial'", max_results=1000)
    port = free_port()
    argv, env = ui_command(uri, "127.0.0.1", port)
    server = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(base + "/health")
        out = Path(args.out)
        shoot(f"{base}/#/experiments/{exp}", out / "mlflow-first-open.png")
        link = tracking.runs_link(uri, args.task, args.sweep, base)  # what harness run and ui print
        shoot(link, out / "mlflow-runs.png")
        shoot(link.replace("/runs?", "/runs?compareRunsMode=CHART&"), out / "mlflow-chart.png")
        query = urllib.parse.urlencode({"runs": json.dumps([r.info.run_id for r in trials]),
                                        "experiments": json.dumps([exp])})
        shoot(f"{base}/#/compare-runs?{query}", out / "mlflow-compare.png", height=1600)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("report", help="a report.html")
    p.add_argument("html")
    p.add_argument("png")
    p.add_argument("--width", type=int, default=1200)
    p.add_argument("--height", type=int, default=2400)
    p = sub.add_parser("mlflow", help="the MLflow UI over a sweep's store")
    p.add_argument("--sweep", required=True, help="sweep name")
    p.add_argument("--task", default="gsm8k", help="the experiment (default: gsm8k)")
    p.add_argument("--storage", default="runs", help="sweeps folder holding mlflow.db (default: runs)")
    p.add_argument("--tracking-uri", default="", help="another store (default: as harness run)")
    p.add_argument("--out", default="docs/img", help="folder for mlflow-*.png (default: docs/img)")
    args = parser.parse_args()
    {"report": report, "mlflow": mlflow}[args.command](args)


if __name__ == "__main__":
    main()
