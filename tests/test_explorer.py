"""The head explorer in a real browser: headless Chromium (Debian's `chromium`, driven by
Playwright) opens the reduced demo's pages from disk with every network request refused, a head
is clicked, and the numbers and the decoded context the page shows are checked against the
stores (summary, intervals, tokens.zarr decoded with the model's tokenizer). Screenshots go to
tests/artifacts/ (git-ignored): look at them.

Slow: it shares the reduced demo run of tests/test_report.py (the session fixture
`finished_run` in conftest.py). Skipped, saying why in one line, where chromium or Playwright
cannot start."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from selfrepair.analysis.attribution import top_repairers
from selfrepair.analysis.explorer import readable
from selfrepair.data.tokens import load_tokenizer
from selfrepair.plots.explorer import explorer_html
from selfrepair.stages.data import open_tokens
from selfrepair.stages.store import open_zarr

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
MODEL = "tiny-gpt2"


def page_data(path: Path) -> dict:
    text = path.read_text()
    return json.loads(re.search(r'id="explorer-data">(.*?)</script>', text, re.S).group(1))


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    if executable is None:
        pytest.skip("no `chromium` on PATH (Debian: apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        pytest.skip(f"Playwright is not installed ({e}): pip install -e '.[dev]'")
    try:
        pw = sync_playwright().start()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"Playwright cannot start: {str(e).splitlines()[0]}")
    try:
        chromium = pw.chromium.launch(executable_path=executable, args=["--no-sandbox"])
    except Exception as e:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"chromium cannot start under Playwright: {str(e).splitlines()[0]}")
    yield chromium
    chromium.close()
    pw.stop()


def offline_page(browser, requested: list[str]):
    """A page on which every request that is not file:// is refused and recorded."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})

    def refuse(route):
        requested.append(route.request.url)
        route.abort()

    page.route(re.compile(r"^(?!file:).*"), refuse)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def shot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)


def number(text: str) -> float:
    return float(text.replace("−", "-"))


pytestmark = pytest.mark.slow


def test_index_links_every_model_offline(finished_run, browser, tmp_path):
    run, _ = finished_run
    explorer = run / "results" / "explorer"
    requested: list[str] = []
    page, errors = offline_page(browser, requested)
    page.goto((explorer / "index.html").as_uri())
    links = page.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    tasks = {f"tasks/induction/{m}.html" for m in ("tiny-gpt2", "tiny-pythia")}
    assert set(links) == {"tiny-gpt2.html", "tiny-pythia.html"} | tasks
    shot(page, tmp_path, "explorer-index.png")
    for task_page in sorted(tasks):  # the task pages load offline, without errors, too
        page.goto((explorer / task_page).as_uri())
        assert "on task induction" in page.content()
    assert requested == [] and errors == []


def test_clicked_head_shows_the_stores_numbers_and_context(finished_run, browser, tmp_path):
    run, _ = finished_run
    results = run / "results"
    path = results / "explorer" / f"{MODEL}.html"
    data = page_data(path)
    summary = open_zarr(results / MODEL / "summary" / "resample.zarr")
    intervals = open_zarr(results / MODEL / "intervals" / "resample.zarr")
    # The head with the largest mean self-repair under resample ablation.
    grid = summary["mean_self_repair"].values
    layer, head = np.unravel_index(np.nanargmax(grid), grid.shape)

    requested: list[str] = []
    page, errors = offline_page(browser, requested)
    page.goto(path.as_uri())
    shot(page, tmp_path, "explorer-grid.png")
    page.click(f"#cell-{layer}-{head}")
    assert page.inner_text("#head-title").startswith(f"L{layer}H{head}, resample")
    for field in (
        "mean_de_clean",
        "mean_logit_diff",
        "mean_self_repair",
        "top_self_repair",
        "top_sr_heads",
        "top_sr_mlps",
        "top_sr_ln",
        "top_ln_share",
    ):
        row = page.locator(f'#summary tr[data-field="{field}"]')
        shown = number(row.locator("td.value").inner_text())
        assert shown == pytest.approx(float(summary[field].values[layer, head]), rel=1e-3), field
        if field in intervals:
            lo, hi = (
                number(x)
                for x in re.findall(r"[-−\d.e+]+", row.locator("td.interval").inner_text())
            )
            assert [lo, hi] == pytest.approx(list(intervals[field].values[layer, head]), rel=1e-3)

    # Who repairs it: the repair summary's top repairers, in its order, with their numbers.
    repair = open_zarr(results / MODEL / "attribution" / "resample.zarr")
    expected = top_repairers(repair, (int(layer), int(head)), 5)
    shown_rows = page.locator("#repairers tr[data-component]")
    assert [r.get_attribute("data-component") for r in shown_rows.all()] == expected
    first_dde = number(shown_rows.first.locator("td.num").first.inner_text())
    assert first_dde == pytest.approx(
        float(repair.top_dde.sel(layer=layer, head=head, component=expected[0])), rel=1e-3
    )

    # The top token by clean DE: its context and next token are tokens.zarr's, decoded.
    tokens, _ = open_tokens(str(results / MODEL / "tokens.zarr"))
    tokenizer, _ = load_tokenizer({"name": MODEL}, str(run / "resources" / "models" / MODEL))
    first = page.locator("#top-de .entry").first
    row, pos = int(first.get_attribute("data-row")), int(first.get_attribute("data-pos"))
    context = data["context"]
    start = max(0, pos - context + 1)
    expected = [readable(tokenizer.decode([int(t)])) for t in tokens[row, start : pos + 1]]
    assert first.locator(".ctx .tok").all_inner_texts() == expected
    assert first.locator(".ctx .next").first.inner_text() == readable(
        tokenizer.decode([int(tokens[row, pos + 1])])
    )
    # ... and it is the head's largest clean DE over every measured token.
    shards = sorted((results / MODEL / "clean").glob("shard-*.zarr"))
    stores = [open_zarr(s) for s in shards]  # under engine.store_tokens: top, each shard's best
    de = np.concatenate(
        [ds.get("de_head", ds.get("top_candidate_de_head"))[layer, head] for ds in stores], None
    )
    assert float(first.locator(".meta").inner_text().split("DE ")[1].split(",")[0]) == (
        pytest.approx(float(np.nanmax(de)), rel=1e-3)
    )
    assert first.locator(".partner").count() == 1  # resample: the partner's context
    first.locator(".ctx .tok").last.hover()
    shot(page, tmp_path, "explorer-head.png")
    page.select_option("#ablation", "zero")
    assert page.inner_text("#head-title").startswith(f"L{layer}H{head}, zero")
    assert page.locator("#top-de .entry .partner").count() == 0
    page.select_option("#colour", "sr")
    shot(page, tmp_path, "explorer-head-zero-by-self-repair.png")
    assert requested == [], f"the page fetched {requested}"
    assert errors == [], errors


def test_task_page_names_its_partner_sign_and_colours(finished_run, browser, tmp_path):
    """A task page (issue 36): the corrupted prompt named as the partner (not 'resample partner
    row N'), none under mean; the metric's drop (clean - ablated, the figures' sign) per answer
    and in one set of summary rows over the answers; the clean metric; a colour legend."""
    run, _ = finished_run
    results = run / "results"
    task = results / MODEL / "tasks" / "induction"
    summary = open_zarr(task / "summary" / "corrupted.zarr")
    grid = summary["mean_self_repair"].values
    layer, head = np.unravel_index(np.nanargmax(grid), grid.shape)
    requested: list[str] = []
    page, errors = offline_page(browser, requested)
    page.goto((results / "explorer" / "tasks" / "induction" / f"{MODEL}.html").as_uri())
    legend = page.inner_text("#legend")
    assert "negative" in legend and "positive" in legend
    clean = json.loads((task / "metric.json").read_text())
    info = page.inner_text("#task")
    assert f"mean {clean['label']} {clean['mean']:.3g}" in info
    assert ("does not solve this task" in info) == (clean["top1"] < 0.5)
    page.click(f"#cell-{layer}-{head}")
    assert page.inner_text("#head-title").startswith(f"L{layer}H{head}, corrupted")
    drop = page.locator('#summary tr[data-field="mean_metric_drop"]')
    assert "clean − ablated" in drop.inner_text()
    assert number(drop.locator("td.value").inner_text()) == pytest.approx(
        -float(summary["mean_logit_diff"].values[layer, head]), rel=1e-3
    )
    assert page.locator('#summary tr[data-field^="top_self_repair"]').count() == 0
    first = page.locator("#top-de .entry").first
    row, pos = int(first.get_attribute("data-row")), int(first.get_attribute("data-pos"))
    partner = first.locator(".partner").inner_text()
    assert partner.startswith("corrupted prompt") and "resample" not in partner
    ablated = open_zarr(task / "ablation" / "corrupted.zarr")
    at = np.flatnonzero((ablated.prompt.values == row) & (ablated.position.values == pos))
    expected = -float(ablated["logit_diff"].values[layer, head, at[0]])
    meta = first.locator(".meta").inner_text()
    assert number(meta.split("metric drop (clean − ablated) ")[1]) == pytest.approx(
        expected, rel=1e-3, abs=1e-6
    )
    shot(page, tmp_path, "explorer-task-head.png")
    page.select_option("#ablation", "mean")
    assert page.locator("#top-de .entry .partner").count() == 0
    assert requested == [] and errors == []


def test_the_network_guard_catches_a_request(browser):
    """The guard the tests above rely on: a page that asks for a remote file is caught."""
    requested: list[str] = []
    page, _ = offline_page(browser, requested)
    page.set_content('<img src="http://example.invalid/x.png">')
    page.wait_for_timeout(200)
    assert requested == ["http://example.invalid/x.png"]


HOSTILE = "<!--<script>"


def test_a_hostile_vocabulary_piece_is_shown_as_text(finished_run, browser, tmp_path):
    """A tokenizer may hold any piece: one that opens an HTML comment and a script tag inside
    the page's data must neither blank the page nor run, only be shown."""
    run, _ = finished_run
    data = page_data(run / "results" / "explorer" / f"{MODEL}.html")
    layer, head = next(iter(data["heads"]["resample"])).split(".")
    data["vocab"] = dict.fromkeys(data["vocab"], HOSTILE)  # every token shown is the piece
    page_file = tmp_path / "hostile.html"
    page_file.write_text(explorer_html(data))
    assert HOSTILE not in page_file.read_text()  # escaped in the inlined data
    requested: list[str] = []
    page, errors = offline_page(browser, requested)
    page.goto(page_file.as_uri())
    page.click(f"#cell-{layer}-{head}")
    assert page.inner_text("#head-title").startswith(f"L{layer}H{head}")
    shown = page.locator("#top-de .entry .ctx .tok").all_inner_texts()
    assert shown and set(shown) == {readable(HOSTILE)}
    shot(page, tmp_path, "explorer-hostile-piece.png")
    assert requested == [] and errors == []
