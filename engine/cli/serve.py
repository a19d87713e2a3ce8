"""``vcell serve`` and ``demo``: the dashboard on a bundle (Streamlit, in a child process)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
import urllib.request
import webbrowser
from pathlib import Path

from engine.build.pipeline import build_atlas
from engine.build.prepare import BuildOptions
from engine.bundle.atlas import read_atlas
from engine.data.synth.generate import generate_atlas
from engine.progress import TqdmProgress

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
"""The dashboard's Streamlit script (``app/`` beside ``engine/``)."""


def serve(bundle: str | os.PathLike, port: int = 8501, headless: bool = False) -> int:
    """Start the Streamlit dashboard on ``bundle`` (after checking it opens); return its exit status.

    Streamlit itself always runs headless (otherwise its first run asks for an e-mail on
    the terminal); unless ``headless``, a browser tab is opened once the server answers.
    """
    read_atlas(bundle)  # fail here, in one sentence, rather than inside the app
    env = {**os.environ, "VCELL_BUNDLE": str(Path(bundle).resolve())}
    url = f"http://localhost:{port}"
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    print(f"serving {bundle} at {url} (Ctrl+C to stop)", flush=True)
    server = subprocess.Popen(cmd, env=env, cwd=APP.parent)  # Streamlit reads .streamlit/ from the cwd
    if not headless:
        threading.Thread(target=_open_browser_when_up, args=(url, server), daemon=True).start()
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        return server.wait()


def _open_browser_when_up(url: str, server: subprocess.Popen, timeout: float = 120.0) -> None:
    """Open ``url`` in the user's browser once the server answers (no-op without a browser)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
        except OSError:
            time.sleep(0.5)
            continue
        webbrowser.open(url)
        return


def add_serve(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell serve``."""
    p.add_argument("bundle")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true", help="do not open a browser window")
    p.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    """Serve the dashboard until it stops."""
    return serve(args.bundle, args.port, args.headless)


def add_demo(p: argparse.ArgumentParser) -> None:
    """Options of ``vcell demo``."""
    p.add_argument("--cells", type=int, default=30_000)
    p.add_argument("--dir", default="demo", help="where the demo atlas and bundle go")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--headless", action="store_true")
    p.add_argument("--no-serve", action="store_true", help="build only")
    p.set_defaults(handler=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    """Generate (once) a demo atlas, build (once) its bundle, and serve it."""
    root = Path(args.dir)
    source = root / f"generated-{args.cells}"
    bundle = root / f"generated-{args.cells}.vcell"
    if not source.exists():
        with TqdmProgress("generate") as progress:
            generate_atlas(source, args.cells, progress=progress)
    if not bundle.exists():
        with TqdmProgress("build") as progress:
            build_atlas(source, bundle, BuildOptions(), command=args.command_line, progress=progress)
    if args.no_serve:
        print(f"demo bundle ready at {bundle}")
        return 0
    return serve(bundle, args.port, args.headless)


COMMANDS = {"serve": add_serve, "demo": add_demo}
