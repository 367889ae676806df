"""`synbt web` driven in a real headless browser (Debian's chromium through Playwright; nothing downloaded).

The server runs as `python -m SynBTLib web` in a subprocess; the page is used the way a person uses it:
choose a case, choose the method, click in the view to place a tumor, Generate, wait for the progress
bar, compare before / after, save; a reader answers, reloads, resumes. Screenshots go to a temporary
folder, or to the folder SYNBT_SCREENSHOTS names (`SYNBT_SCREENSHOTS=docs` refreshes docs/web_*.png):
a test run never rewrites tracked files.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (CI installs Debian's: apt-get install chromium)"),
]
playwright_api = pytest.importorskip("playwright.sync_api", reason="the web extra is not installed (pip install 'synbt[web]')")
pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'synbt[web]')")

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(os.environ.get("SYNBT_SCREENSHOTS") or tempfile.mkdtemp(prefix="synbt_web_shots_"))
DOCS = DOCS if DOCS.is_absolute() else ROOT / DOCS
CASE = "case_a"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, *args, host="127.0.0.1"):
        self.port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"synbt_web_{self.port}.log", "w+")
        self.process = subprocess.Popen([sys.executable, "-m", "SynBTLib", "web", *args, "--host", host,
                                         "--port", str(self.port)], env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240  # a loaded 2-core CI machine starts VTK slowly
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"synbt web exited: {self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                found = re.search(r"\?secret=(\S+)", self.output())
                if found is None:
                    raise RuntimeError(f"synbt web printed no token: {self.output()}")
                self.secret = found.group(1)
                return
            except OSError:
                time.sleep(0.3)
        output = self.output()
        self.stop()  # never leave a server behind
        raise RuntimeError(f"synbt web did not listen: {output}")

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-3000:]

    def url(self, query: str | None = None) -> str:
        """The page's address; by default with the printed token (query "" gives none)."""
        return f"http://127.0.0.1:{self.port}/{f'?secret={self.secret}' if query is None else query}"

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from SynBTLib.phantom import make_phantom, write_phantom

    root = tmp_path_factory.mktemp("data")
    write_phantom(make_phantom(seed=4, shape=(96, 96, 32), tumors=0), root / CASE, montage=False)
    return root


def _page(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.goto(url)
    page.wait_for_selector("#panel", timeout=60000)
    return page


def _select(page, label, option):
    page.locator(".v-select", has_text=label).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def _wait_text(page, selector, text, timeout=60000):
    page.wait_for_function("([s, t]) => { const e = document.querySelector(s); return e && e.innerText.includes(t); }",
                           arg=[selector, text], timeout=timeout)


def _view_pixels(page) -> np.ndarray:
    from io import BytesIO

    from PIL import Image

    box = page.locator("#views").bounding_box()
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(BytesIO(png)).convert("L")).astype(np.int16)


def _rendered_view(page, timeout=60.0) -> np.ndarray:
    """The view's pixels once the server has streamed a picture into it (not the empty black canvas)."""
    deadline = time.monotonic() + timeout
    while True:
        pixels = _view_pixels(page)
        if pixels[2:-2, 2:-2].mean() > 5 or time.monotonic() > deadline:
            return pixels
        time.sleep(0.5)


def _load_case_and_place(page, method):
    _select(page, "Case (from --data)", CASE)
    page.click("#load")
    _wait_text(page, "#status", "Loaded")
    _select(page, "Method", method)
    page.fill("#diameter", "20")
    page.click("#place")
    box = page.locator("#views").bounding_box()
    # a person clicks into the breast; a click outside breast tissue is refused with a message
    for fx, fy in ((0.74, 0.30), (0.26, 0.33), (0.70, 0.33), (0.30, 0.36)):
        page.mouse.click(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        try:
            _wait_text(page, "#status", "Placed", timeout=5000)
            return box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        except playwright_api.Error:
            continue
    raise AssertionError(f"no click placed a tumor: {page.inner_text('#error')}")


def _generate_and_check(page, data, click_xy, shot=None):
    page.click("#generate")
    page.wait_for_selector("#result", timeout=600000)
    assert page.inner_text("#error").strip() == ""
    assert page.locator("#progress").get_attribute("aria-valuenow") == "100"
    time.sleep(1.0)  # let the view stream the new frame
    after = _rendered_view(page)
    page.locator(".v-switch input").click()  # back to the input
    time.sleep(1.5)
    before = _view_pixels(page)
    # from the screen: the picture changed, and only near the clicked point
    changed = np.abs(after - before) > 12
    assert changed.sum() > 20
    box = page.locator("#views").bounding_box()
    ys, xs = np.nonzero(changed)
    cx, cy = click_xy[0] - box["x"], click_xy[1] - box["y"]
    distance = np.hypot(xs - cx, ys - cy)
    assert np.percentile(distance, 99) < 0.12 * box["width"], "pixels changed far from the placed tumor"
    page.locator(".v-switch input").click()  # after again
    if shot:
        page.locator("#curve").scroll_into_view_if_needed()
        time.sleep(1.5)
        page.screenshot(path=str(DOCS / shot))
    # the subtraction image (post 1 - pre) of the result: the tumor is its brightest region
    post1 = _view_pixels(page)
    _select(page, "Show", "subtraction (post 1 - pre)")
    time.sleep(1.5)
    subtraction = _view_pixels(page)
    assert np.abs(subtraction - post1).mean() > 5
    if shot:
        page.screenshot(path=str(DOCS / shot.replace(".png", "_subtraction.png")))
    # from the scene: save the result, then read it with the engine's reader
    page.click("#save")
    _wait_text(page, "#status", "Saved")
    from SynBTLib.io import read_case, read_image

    saved = data / page.inner_text("#saved").strip()
    result, source = read_case(saved), read_case(data / CASE)
    mask = read_image(saved / "tumor_labels.nii.gz")[0] > 0
    assert mask.any() and result.shape == source.shape
    delta = np.abs(result.phases - source.phases)
    assert delta[1][mask].mean() > 0.05 * np.abs(source.phases[1][mask]).mean()  # the tumor region changed
    from scipy import ndimage

    near = ndimage.binary_dilation(mask, iterations=2)
    assert delta[:, ~near].max() == 0, "voxels away from the tumor region changed"
    return saved


@pytest.mark.slow  # 35 s alone, 80 s on a loaded 2-core machine
def test_place_generate_compare_save_handcrafted(browser, data):
    server = Server("--data", str(data))
    try:
        page = _page(browser, server.url())
        page.screenshot(path=str(DOCS / "web_start.png"))
        click = _load_case_and_place(page, "handcrafted")
        _generate_and_check(page, data, click, shot="web_result.png")
        page.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_generate_with_the_diffusion_bundle(browser, data):
    server = Server("--data", str(data))
    try:
        page = _page(browser, server.url())
        click = _load_case_and_place(page, "diffusion")
        page.fill("#steps", "5")
        _generate_and_check(page, data, click, shot="web_result_diffusion.png")
        page.close()
    finally:
        server.stop()


def test_two_readers_answer_reload_and_resume(browser, tmp_path):
    from SynBTLib import reader_study as rs
    from SynBTLib.phantom import make_phantom, write_phantom

    for kind, seeds in (("real", (1, 2)), ("synthetic", (11, 12))):
        for seed in seeds:
            write_phantom(make_phantom(seed=seed, shape=(64, 64, 16), tumors=1), tmp_path / kind / f"c{seed}", montage=False)
    study = rs.create_study(tmp_path / "real", tmp_path / "synthetic", 4, tmp_path / "study")
    def sign_in(page, name):
        page.wait_for_selector("#reader", timeout=60000)
        page.locator("#reader").fill(name)
        page.click("#start")

    server = Server("--study", str(study))
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server.url())
        sign_in(page, "Dr Test")
        _wait_text(page, "#counter", "view 1 of 4")
        page.screenshot(path=str(DOCS / "web_study.png"))
        page.click("#answer-real")
        _wait_text(page, "#counter", "view 2 of 4")
        page.click("#answer-synthetic")
        _wait_text(page, "#counter", "view 3 of 4")
        other = browser.new_page()  # a second reader on the same page at the same time
        other.goto(server.url())
        sign_in(other, "Dr Two")
        _wait_text(other, "#counter", "Dr Two: view 1 of 4")
        other.click("#answer-real")
        _wait_text(other, "#counter", "view 2 of 4")
        assert "Dr Test: view 3 of 4" in page.inner_text("#counter")  # each tab keeps its own reader and view
        page.goto(server.url())  # the first reader stops and comes back by the printed link (token included)
        sign_in(page, "Dr Test")
        _wait_text(page, "#counter", "view 3 of 4")  # resumed from the answers database
        page.close()
        other.close()
    finally:
        server.stop()
    server = Server("--study", str(study))  # later the study is served again
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(server.url())
        sign_in(page, "Dr Test")
        _wait_text(page, "#counter", "view 3 of 4")
        page.click("#answer-real")
        _wait_text(page, "#counter", "view 4 of 4")
        page.click("#answer-synthetic")
        page.wait_for_selector("#finished", timeout=30000)
        page.close()
    finally:
        server.stop()
    summary = rs.report(study)
    by = {r["reader"]: r for r in summary["readers"]}
    assert set(by) == {"Dr Test", "Dr Two"}
    assert by["Dr Test"]["answered"] == 4 and by["Dr Test"]["real"] == 2 and by["Dr Test"]["synthetic"] == 2
    assert by["Dr Two"]["answered"] == 1


def test_token_required_beyond_localhost_and_paths_stay_inside(browser, data):
    token = "a-test-token-of-some-length"
    server = Server("--data", str(data), "--token", token, host="0.0.0.0")
    try:
        page = browser.new_page()
        page.goto(server.url(""))
        with pytest.raises(playwright_api.Error):
            page.wait_for_selector("#panel", timeout=8000)  # no token: the websocket is refused, no page
        page.close()
        page = _page(browser, server.url(f"?secret={token}"))
        for bad in ("../", "/etc", f"{CASE}/../../"):
            page.evaluate("(v) => window.trame.state.set('case_name', v)", bad)
            page.click("#load")
            _wait_text(page, "#error", "served folder")
        page.close()
    finally:
        server.stop()


def test_paint_a_region_refused_bundle_and_cancel(browser, data):
    server = Server("--data", str(data))
    try:
        page = _page(browser, server.url())
        _select(page, "Case (from --data)", CASE)
        page.click("#load")
        _wait_text(page, "#status", "Loaded")
        page.locator("label", has_text="segment").first.click()
        _wait_text(page, "#missing", "segment")
        page.get_by_role("button", name="paint", exact=True).click()  # trame-slicer's segment editor
        box = page.locator("#views").bounding_box()
        before = _rendered_view(page)
        x0, y0 = box["x"] + 0.74 * box["width"], box["y"] + 0.30 * box["height"]
        page.mouse.move(x0, y0)
        page.mouse.down()
        for k in range(10):
            page.mouse.move(x0 + 3 * k, y0 + 2 * k)
        page.mouse.up()
        page.wait_for_selector("#missing", state="detached", timeout=30000)  # the painted segment is a region
        time.sleep(1.5)
        assert (np.abs(_view_pixels(page) - before) > 12).sum() > 50  # the painted region is drawn
        page.get_by_label("Bundle (folder under --data; empty: shipped)").fill("../..")
        page.click("#generate")
        _wait_text(page, "#error", "served folder")  # a bundle outside --data is refused
        page.get_by_label("Bundle (folder under --data; empty: shipped)").fill("")
        page.click("#generate")  # diffusion (the default method): long enough to cancel
        page.click("#cancel", timeout=30000)
        _wait_text(page, "#status", "Cancelled")
        assert page.locator("#result").count() == 0
        page.close()
    finally:
        server.stop()


@pytest.mark.slow
def test_export_a_synthetic_data_set(browser, tmp_path):
    from SynBTLib.datasets import find_phase_files
    from SynBTLib.phantom import make_phantom, write_phantom

    write_phantom(make_phantom(seed=5, shape=(64, 64, 16), tumors=0), tmp_path / "cohort" / "c5", montage=False)
    server = Server("--data", str(tmp_path))
    try:
        page = _page(browser, server.url())
        page.locator("#export").scroll_into_view_if_needed()
        page.get_by_label("Source data set (under --data)").fill("cohort")
        page.get_by_label("Output folder (under --data)").fill("exported")
        page.get_by_label("Cases").fill("2")
        page.locator(".v-select", has_text="Method").nth(1).click()
        page.get_by_role("option", name="handcrafted", exact=True).click()
        page.click("#export")
        _wait_text(page, "#export-message", "done", timeout=300000)
        page.close()
    finally:
        server.stop()
    exported = tmp_path / "exported"
    assert exported.is_dir() and any(exported.rglob("*.nii.gz"))
    assert find_phase_files(tmp_path / "cohort" / "c5")  # the source is untouched
