"""report.html in a real headless Chromium (Debian's package): no console message (a script
error is one), every plot shows data marks, screenshots saved; and the check's negative control,
a page whose plot has no data and whose script throws, must be caught."""

import pytest
from browser_check import check_page, ensure_chromium
from html_fakes import write_run

from parity.report import html


@pytest.fixture(scope="module")
def chromium():
    found, why = ensure_chromium()
    if found is None:
        pytest.skip(why)
    return found


def test_report_page_in_chromium(chromium, tmp_path):
    write_run(tmp_path / "run")
    page = html.write(tmp_path / "run")
    found = check_page(page, tmp_path / "browser", chromium)
    for shot in found.screenshots:
        print(f"screenshot: {shot}")
    assert found.problems == []
    assert len(found.figures) >= 11 and all(n > 0 for n in found.figures.values())
    # every plot the page holds was counted by its script
    assert len(found.figures) == page.read_text().count('<figure class="plot')
    assert len(found.screenshots) == 2 and all(s.stat().st_size > 10_000 for s in found.screenshots)


def test_check_catches_an_empty_plot_and_a_script_error(chromium, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><body><figure class="plot" id="plot-x"><svg></svg>'
        f"</figure><script>{html.SCRIPT}\nundefinedFunction();</script></body></html>"
    )
    found = check_page(page, tmp_path / "browser", chromium)
    assert found.figures == {"plot-x": 0}
    assert any("plot without data: plot-x" in m for m in found.console)
    assert any("undefinedFunction" in m for m in found.console)
    assert len(found.problems) == 3
