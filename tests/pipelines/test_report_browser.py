"""A real browser renders report.html: headless Chromium at 1400 px and 800 px, every figure
loaded and nothing wider than the window. Skipped only where no chromium binary exists
(`.ci/run` installs Debian's `chromium` where it is missing).

`render` is also how docs/report.png is taken:
``MIXLAB_REPORT_HTML=runs/quickstart/11_report/report.html MIXLAB_SCREENSHOT=docs/report.png pytest -k browser``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)")

# Runs after the page has loaded: what a reader would see, written into the DOM for --dump-dom.
CHECK = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement;
  const wide = [...document.body.querySelectorAll('*')]
    .filter(e => e.getBoundingClientRect().right > root.clientWidth + 1 && !e.closest('.table'))
    .map(e => e.tagName.toLowerCase());
  const out = document.createElement('pre');
  out.id = 'mixlab-check';
  out.textContent = JSON.stringify({
    width: root.clientWidth, scroll_width: root.scrollWidth, wider: wide,
    images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
  });
  document.body.appendChild(out);
});
</script>"""


def render(html: Path, width: int, screenshot: Path | None = None, height: int = 1800) -> dict:
    """Open `html` in headless Chromium at `width` px; the page's own measurements (and a screenshot)."""
    probe = html.with_name(f".{html.stem}.probe.html")
    probe.write_text(html.read_text().replace("</body>", CHECK + "</body>"))
    base = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--window-size={width},{height}", "--virtual-time-budget=5000"]  # fmt: skip
    try:
        dom = subprocess.run(
            [*base, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
        )
        if screenshot is not None:
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [*base, f"--screenshot={screenshot}", html.as_uri()], capture_output=True, timeout=120
            )
    finally:
        probe.unlink()
    m = re.search(r'<pre id="mixlab-check">(.*?)</pre>', dom.stdout, re.S)
    assert m, f"chromium gave no result (rc {dom.returncode}): {dom.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"'))


@pytest.fixture(scope="module")
def report_html(request) -> Path:
    given = os.environ.get("MIXLAB_REPORT_HTML")
    if given:
        return Path(given)
    root = request.getfixturevalue("demo_run")
    return root / "10_report" / "report.html"


@needs_chromium
@pytest.mark.parametrize("width", [1400, 800])
def test_the_report_renders_in_a_browser_with_every_figure_and_no_horizontal_overflow(
    report_html: Path, width: int, tmp_path: Path
) -> None:
    shot = os.environ.get("MIXLAB_SCREENSHOT") if width == 1400 else None
    seen = render(report_html, width, Path(shot) if shot else tmp_path / f"report_{width}.png")
    assert seen["width"] == width
    assert seen["images"] and all(seen["images"]), seen["images"]  # every figure decoded
    assert seen["scroll_width"] <= seen["width"], seen  # nothing overflows horizontally
    assert seen["wider"] == [], seen
    assert (Path(shot) if shot else tmp_path / f"report_{width}.png").stat().st_size > 10_000
