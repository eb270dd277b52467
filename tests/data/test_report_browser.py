"""report.html opened in a real browser: headless Chromium (Debian's ``chromium`` package).

scripts/setup.sh installs it (as root). When it is missing these tests FAIL with a message saying so:
a report nobody has seen render is not a tested report.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from parsit_data.report.html import sections

WIDTH, HEIGHT = 1280, 4000


def chromium() -> str:
    exe = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
    if exe is None:
        pytest.fail("Chromium is not installed, so report.html cannot be checked in a browser: install it with "
                    "`apt-get install -y chromium` (scripts/setup.sh does this when run as root)")
    return exe


def run_chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               # no name resolves: anything that tried to leave the page would fail to load
               "--host-resolver-rules=MAP * ~NOTFOUND", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"chromium failed ({res.returncode}): {res.stderr[-2000:]}"
    return res


# After load, write each image's decoded size into the DOM so that --dump-dom can show it.
PROBE = ("<script>window.addEventListener('load',()=>{for(const i of document.images){"
         "i.setAttribute('data-nw',i.naturalWidth);i.setAttribute('data-nh',i.naturalHeight);"
         "i.setAttribute('data-cw',i.clientWidth);}document.body.setAttribute('data-probed','yes');});</script>")


class _Dom(HTMLParser):
    def __init__(self):
        super().__init__()
        self.h2: list[str] = []
        self.imgs: list[dict] = []
        self.body: dict = {}
        self._in = False

    def handle_starttag(self, tag, attrs):
        if tag == "h2":
            self._in, self._text = True, ""
        elif tag == "img":
            self.imgs.append(dict(attrs))
        elif tag == "body":
            self.body = dict(attrs)

    def handle_data(self, data):
        if self._in:
            self._text += data

    def handle_endtag(self, tag):
        if tag == "h2" and self._in:
            self.h2.append(self._text.strip())
            self._in = False


@pytest.mark.timeout(300)
def test_report_renders_with_headings_and_plots(demo_build, tmp_path):
    html = (demo_build / "report.html").read_text()
    probed = tmp_path / "probed.html"
    probed.write_text(html.replace("</body>", PROBE + "</body>"))
    res = run_chromium("--virtual-time-budget=15000", "--dump-dom", probed.as_uri())
    dom = _Dom()
    dom.feed(res.stdout)
    assert dom.body.get("data-probed") == "yes", "the page's load event never fired"
    near = "near_duplicates" in json.loads((demo_build / "report.json").read_text())
    assert dom.h2 == [title for _, title in sections(near)]
    assert len(dom.imgs) == html.count("<img ") >= 8
    for img in dom.imgs:
        assert int(img["data-nw"]) > 100 and int(img["data-nh"]) > 50, (img.get("alt"), img.get("data-nw"))
        assert int(img["data-cw"]) > 100, img.get("alt")  # laid out at a visible size


@pytest.mark.timeout(300)
def test_screenshot_is_not_blank(demo_build, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(f"--screenshot={shot}", f"--window-size={WIDTH},{HEIGHT}", (demo_build / "report.html").as_uri())
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape == (HEIGHT, WIDTH, 3)
    background = np.array([0xF4, 0xF5, 0xF7])
    painted = np.abs(im - background).sum(axis=2) > 30
    assert painted.mean() > 0.10, "the page is (nearly) blank"
    # The verdict banner is drawn near the top in its colour.
    verdict = json.loads((demo_build / "report.json").read_text())["summary"]["verdict"]
    css = (Path(__file__).resolve().parents[2] / "parsit_data" / "report" / "html.py").read_text()
    hexcol = re.search(r"\.v-" + re.escape(verdict) + r"\{background:#([0-9a-f]{6})\}", css).group(1)
    colour = np.array([int(hexcol[i:i + 2], 16) for i in (0, 2, 4)])
    top = im[:600]
    assert (np.abs(top - colour).sum(axis=2) < 12).sum() > 20_000, f"no {verdict} banner at the top"
    # The plots are there: many pixels of the first plot colour (bars) below the tables.
    bars = np.abs(im - np.array([0x3B, 0x6E, 0xA8])).sum(axis=2) < 12
    assert bars.sum() > 5_000, "no plot bars visible in the screenshot"
