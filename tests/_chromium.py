"""Load a report page in a real headless Chromium and read what its own JavaScript counted.

The page writes a JSON summary (console errors, charts drawn per section) into
``#report-check`` once it has run; ``--dump-dom`` prints the DOM after the scripts ran.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(BROWSER is None, reason="needs Debian's chromium (apt-get install chromium)")

_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
          "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
          "--virtual-time-budget=5000",
          # The page is a file with everything inline; Chromium's own calls home (update.googleapis.com
          # was seen on 2026-12-06 despite the flags above) go to a closed loopback port.
          "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>"]


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run([BROWSER, *_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def page_check(page: Path) -> dict:
    """The page's own summary after Chromium ran it from file://."""
    proc = _run(["--dump-dom", Path(page).resolve().as_uri()])
    m = re.search(r'<pre id="report-check"[^>]*>(.*?)</pre>', proc.stdout, re.S)
    assert m, f"no #report-check in the DOM Chromium dumped (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))


def screenshot(page: Path, png: Path, width: int = 1400, height: int = 5000) -> Path:
    proc = _run([f"--screenshot={png}", f"--window-size={width},{height}", Path(page).resolve().as_uri()])
    assert png.is_file(), proc.stderr[-2000:]
    return png
