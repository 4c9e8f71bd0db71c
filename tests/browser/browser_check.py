"""Open a report.html in a real headless Chromium: the DOM after its scripts ran, every console
message (a page script error is one), each plot's count of data marks, and a screenshot.

Also a script: `python tests/browser/browser_check.py REPORT.html [OUT_DIR]` prints what it found and
exits 1 when a plot has no data or the console logged anything."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
    "--no-first-run",
    "--disable-extensions",
]
# Chromium prints console messages to stderr as `...:INFO:CONSOLE:<line>] "<text>", source: ...`
CONSOLE = re.compile(r":CONSOLE(?::\d+|\(\d+\))\] (.*)")


@dataclass
class PageCheck:
    """What a page did in the browser."""

    figures: dict[str, int] = field(default_factory=dict)  # figure id -> data marks drawn
    console: list[str] = field(default_factory=list)  # every console message
    script_ran: bool = False  # the page's check script marked the body
    screenshots: list[Path] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = [f"console: {m}" for m in self.console]
        out += [f"{fid}: no data drawn" for fid, n in self.figures.items() if n <= 0]
        if not self.script_ran:
            out.append("the page's check script did not run")
        return out


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def ensure_chromium() -> tuple[str | None, str]:
    """(the browser, "") or (None, why not): installs Debian's chromium with apt-get when it is
    absent and this process is root, as `make browser` (part of `make test`) does."""
    found = find_chromium()
    if found:
        return found, ""
    if os.geteuid() != 0:
        return None, (
            "chromium is not installed and this user is not root: install it with "
            "`sudo apt-get install -y chromium` (Debian) to run the browser tests"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "chromium"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if proc.returncode != 0 or not find_chromium():
        raise RuntimeError(
            f"apt-get install chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
        )
    return find_chromium(), ""


def _run(browser: str, url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, *FLAGS, *extra, url], capture_output=True, text=True, timeout=timeout
    )


def check_page(
    page: Path, out_dir: Path, browser: str | None = None, timeout: float = 60.0
) -> PageCheck:
    """Load `page` twice in headless Chromium: --dump-dom (the DOM after scripts ran, console
    messages from stderr) and --screenshot at a wide and a phone width, into out_dir."""
    browser = browser or find_chromium()
    if browser is None:
        raise RuntimeError("no chromium on PATH")
    page, out_dir = Path(page).resolve(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    url = page.as_uri()
    profile = ["--user-data-dir=" + str(out_dir / "chromium-profile")]
    dom = _run(browser, url, profile + ["--dump-dom"], timeout)
    if dom.returncode != 0:
        raise RuntimeError(f"chromium exited {dom.returncode}: {dom.stderr[-2000:]}")
    result = PageCheck()
    result.console = [m.group(1) for m in map(CONSOLE.search, dom.stderr.splitlines()) if m]
    for tag in re.findall(r"<figure\b[^>]*>", dom.stdout):
        if 'class="plot' not in tag:
            continue
        fid = re.search(r'id="([^"]*)"', tag)
        marks = re.search(r'data-marks="(\d+)"', tag)
        result.figures[fid.group(1) if fid else f"figure {len(result.figures)}"] = (
            int(marks.group(1)) if marks else -1
        )
    result.script_ran = 'data-plots-checked="yes"' in dom.stdout
    for name, size in (("wide", "1280,2200"), ("phone", "390,2200")):
        shot = out_dir / f"{page.stem}-{name}.png"
        proc = _run(
            browser, url, profile + [f"--window-size={size}", f"--screenshot={shot}"], timeout
        )
        if proc.returncode == 0 and shot.exists():
            result.screenshots.append(shot)
    return result


def main(argv: list[str]) -> int:
    page = Path(argv[0])
    out_dir = Path(argv[1]) if len(argv) > 1 else page.parent
    found = check_page(page, out_dir)
    print(f"{len(found.figures)} plots, marks: {found.figures}")
    for shot in found.screenshots:
        print(f"screenshot: {shot}")
    for p in found.problems:
        print(f"PROBLEM {p}")
    return 1 if found.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
