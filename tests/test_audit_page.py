"""audit.html: one self-contained page over an audit folder, driven in a real browser.

The folder is written by hand following the hygiene interface (tests/audit_dir.py), so every
count, id and highlighted token on the page is known here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit_dir import GARBAGE, SURPRISING_RESPONSE, write_audit_dir
from conftest import CHROMIUM_ARGS
from html_parts import parse
from sftlab.hygiene.review import apply_review
from sftlab.report.audit_page import write_audit_page


@pytest.fixture
def audit(tmp_path) -> Path:
    return write_audit_dir(tmp_path / "audit")


def test_page_is_self_contained(audit):
    html = write_audit_page(audit).read_text(encoding="utf-8")
    parts = parse(html)
    for tag, attrs in parts.tags:
        for name in ("src", "href", "xlink:href", "action", "srcset", "poster"):
            value = attrs.get(name)
            if value is not None:
                # only in-page references (#id in SVG) and the empty data: icon
                assert value.startswith(("#", "data:")), (tag, name, value)
    assert "@import" not in html and "url(http" not in html
    scripts = [a for t, a in parts.tags if t == "script"]
    assert scripts and all("src" not in a for a in scripts)  # inlined, not fetched


def test_page_shows_counts_charts_clusters_and_marked_tokens(audit):
    html = write_audit_page(audit).read_text(encoding="utf-8")
    parts = parse(html)
    ids = [a["data-row"] for t, a in parts.tags if "data-row" in a]
    # review queue (2 rows) first, then the rejected samples (3 rows), each once
    assert ids == ["a.jsonl:2", "a.jsonl:4", "a.jsonl:3", "a.jsonl:5", "b.jsonl:2"]
    # the two surprising tokens, exactly the characters the offsets name
    start = SURPRISING_RESPONSE.index(GARBAGE)
    assert parts.marks == [
        SURPRISING_RESPONSE[start : start + 2],
        SURPRISING_RESPONSE[start + 4 : start + 7],
    ]
    svgs = [t for t, _ in parts.tags if t == "svg"]
    assert len(svgs) == 2  # prompt and response length histograms, inline
    assert "tiny-bytes" in html  # the tokenizer the lengths were counted in
    assert "what is the" in html and "tapestry" in html  # n-grams and slop hits
    assert "kept a.jsonl:1" in html and "rejected a.jsonl:3" in html  # a cluster, side by side
    body = next(a for t, a in parts.tags if t == "body")
    assert body["data-audit"] == "audit"


def test_row_text_is_escaped_not_run(audit):
    review = [json.loads(x) for x in (audit / "review.jsonl").read_text().splitlines()]
    review[1]["messages"][1]["content"] = "<script>alert(1)</script><b>bold?</b>"
    (audit / "review.jsonl").write_text("".join(json.dumps(r) + "\n" for r in review))
    html = write_audit_page(audit).read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;b&gt;" in html
    assert sum(t == "script" for t, _ in parse(html).tags) == 1  # only the page's own


# -- in a real browser --------------------------------------------------------------------------


@pytest.fixture
def browser_page(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        context = browser.new_context(
            accept_downloads=True, viewport={"width": 1280, "height": 900}
        )
        page = context.new_page()
        seen = {"errors": [], "requests": []}
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("request", lambda r: seen["requests"].append(r.url))
        yield page, seen
        browser.close()


def test_page_in_a_browser_marks_two_rows_and_saves_decisions(audit, browser_page, tmp_path):
    page, seen = browser_page
    url = write_audit_page(audit).resolve().as_uri()
    page.goto(url, wait_until="load")

    # charts drawn: inline SVGs with a size and the histogram's bars in them
    for chart in ("#chart-prompt svg", "#chart-response svg"):
        box = page.locator(chart).bounding_box()
        assert box and box["width"] > 100 and box["height"] > 50, chart
        assert page.locator(f"{chart} path").count() > 5  # bars, axes, ticks
    assert page.locator("mark.tok").count() == 2

    save = page.locator("#save-decisions")
    assert save.is_disabled()  # nothing to save yet
    page.click('[data-row="a.jsonl:2"] button[data-decision="drop"]')
    page.click("#rejected summary:has-text('slop')")  # open the slop rule's sample
    page.click('[data-row="a.jsonl:5"] button[data-decision="keep"]')
    # a decision taken back does not reach the file
    page.click('[data-row="a.jsonl:4"] button[data-decision="keep"]')
    page.click('[data-row="a.jsonl:4"] button[data-decision="keep"]')
    assert page.locator("#decision-count").inner_text() == "2 decisions"
    assert page.get_attribute('[data-row="a.jsonl:2"]', "data-decided") == "drop"

    with page.expect_download() as download:
        save.click()
    assert download.value.suggested_filename == "decisions.json"
    saved = tmp_path / "decisions.json"
    download.value.save_as(saved)
    assert json.loads(saved.read_text()) == {
        "version": 1,
        "audit": "audit",
        "decisions": {"a.jsonl:2": "drop", "a.jsonl:5": "keep"},
    }
    page.screenshot(path=str(tmp_path / "audit.png"), full_page=True)
    assert (tmp_path / "audit.png").stat().st_size > 10_000

    assert seen["errors"] == []
    assert [u for u in seen["requests"] if not u.startswith(("file:", "blob:", "data:"))] == []

    # the saved file is what the review loop applies
    result = apply_review(audit, saved)
    assert (result.dropped, result.restored) == (["a.jsonl:2"], ["a.jsonl:5"])


def test_a_long_tail_is_folded_into_the_last_bar():
    from sftlab.report.page import svg_histogram

    folded = str(svg_histogram([*range(100), 100_000], "tokens"))
    assert "last bar: 1 row(s)" in folded  # one row far beyond the rest
    assert "last bar" not in str(svg_histogram(list(range(100)), "tokens"))


def test_reading_only_some_rows_finds_them_by_their_real_id(tmp_path):
    from sftlab.report.audit_page import read_jsonl

    records = [
        {"id": 'odd "name".jsonl:1', "messages": []},
        {"id": "b.jsonl:2", "messages": [{"role": "user", "content": '"id": "c.jsonl:3"'}]},
        {"id": "c.jsonl:3", "messages": []},
        {"source": "d.jsonl", "line": 4, "messages": []},  # no id: "<file>:<line>"
    ]
    path = tmp_path / "kept.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    wanted = {'odd "name".jsonl:1', "c.jsonl:3", "d.jsonl:4"}
    found = list(read_jsonl(path, only=wanted))
    assert found == [records[0], records[2], records[3]]
    assert list(read_jsonl(path)) == records


def test_a_folder_that_is_not_an_audit_is_a_clear_error(audit):
    from sftlab.core.errors import DataError

    (audit / "audit.json").write_text('{"version": 1}')
    with pytest.raises(DataError, match='audit.json: no "totals" object'):
        write_audit_page(audit)
    (audit / "review.jsonl").unlink()
    (audit / "audit.json").write_text('{"version": 1, "totals": {}}')
    with pytest.raises(DataError, match="review.jsonl: not found"):
        write_audit_page(audit)


def test_ifd_chart_only_with_model_scores(audit):
    assert 'id="chart-ifd"' not in write_audit_page(audit).read_text()
    summary = json.loads((audit / "audit.json").read_text())
    summary["model_scores"] = {"model": "tiny", "tokens_per_s": 12.5,
                               "ifd": {"a.jsonl:1": 0.6, "a.jsonl:2": 0.9, "a.jsonl:4": None}}  # fmt: skip
    (audit / "audit.json").write_text(json.dumps(summary))
    html = write_audit_page(audit).read_text()
    assert 'id="chart-ifd"' in html and "tiny, 12 tokens/s" in html
