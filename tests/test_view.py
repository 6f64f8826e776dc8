"""`protocaffe view`: the page's content, and the page itself in a real headless Chromium.

The browser tests drive Debian's chromium through Selenium and skip, saying why, where no
browser or driver is installed (CI installs them: .ci/run).
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from protocaffe.cli import main

ROOT = Path(__file__).resolve().parents[1]
FCN8S = ROOT / "models/fcn8s.prototxt"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")

# A net with a misaligned Crop: its warning must be listed and lead to its layer.
NET = """
name: "view/test"
layer { name: "data" type: "Input" top: "data"
        input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
layer { name: "conv<1>" type: "Convolution" bottom: "data" top: "c1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "pool1" type: "Pooling" bottom: "c1" top: "p1"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "up" type: "Deconvolution" bottom: "p1" top: "up"
        convolution_param { num_output: 8 kernel_size: 4 stride: 2 } }
layer { name: "crop" type: "Crop" bottom: "up" bottom: "c1" top: "crop"
        crop_param { axis: 2 offset: 2 } }
"""


def _page_data(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="net-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` not installed (the page embeds its layout)")
    folder = tmp_path_factory.mktemp("view")
    net = folder / "small.prototxt"
    net.write_text(NET)
    out = {}
    for name, source in (("small", net), ("fcn8s", FCN8S)):
        out[name] = folder / f"{name}.html"
        assert main(["view", str(source), "-o", str(out[name])]) == 0
    return out


@needs_dot
def test_page_is_self_contained(pages: dict[str, Path]) -> None:
    page = pages["fcn8s"].read_text()
    # No network: nothing is fetched from anywhere (the only href is an empty data: icon).
    assert not re.search(r'(src|href)="(?!data:|#)', page)
    assert "http://" not in page.replace("http://www.w3.org", "")
    data = _page_data(page)
    assert len(data["layers"]) == 47
    conv = next(la for la in data["layers"] if la["name"] == "conv1_1")
    assert conv["key"] == "k3 s1 p100 ×64" and conv["top_shapes"] == ["1x64x698x698"]
    assert conv["source"][1] == [27, '  name: "conv1_1"']
    assert any("MACs" in line for line in conv["explain"])
    relu = next(la for la in data["layers"] if la["name"] == "relu1_1")
    assert relu["node"] == conv["node"]  # folded onto its producer


@needs_dot
def test_names_cannot_break_the_page(pages: dict[str, Path]) -> None:
    page = pages["small"].read_text()
    assert "conv<1>" not in page.split('id="net-data">')[0]  # escaped in the SVG and markup
    data = _page_data(page)
    assert [la["name"] for la in data["layers"]][1] == "conv<1>"
    crop = data["layers"][-1]
    assert crop["diagnostics"][0]["severity"] == "warning"


def test_weights_statistics(tmp_path: Path) -> None:
    import protocaffe
    from protocaffe.runtime.caffemodel import save_caffemodel
    from protocaffe.viz.html import weight_statistics

    net = tmp_path / "small.prototxt"
    net.write_text(NET)
    module = protocaffe.load(net, device="cpu", seed=0)
    import torch

    with torch.no_grad():
        module.layer_module("conv<1>").weight.fill_(0.5)
    save_caffemodel(module, tmp_path / "w.caffemodel")
    loaded = protocaffe.load(net, tmp_path / "w.caffemodel", device="cpu")
    stats = weight_statistics(loaded)
    weight = stats["conv<1>"][0]
    assert weight == {
        "name": "weight",
        "shape": "8x3x3x3",
        "mean": "0.5",
        "std": "0",
        "min": "0.5",
        "max": "0.5",
    }
    if shutil.which("dot"):
        out = tmp_path / "w.html"
        argv = ["view", str(net), "--weights", str(tmp_path / "w.caffemodel"), "-o", str(out)]
        assert main(argv) == 0
        assert _page_data(out.read_text())["layers"][1]["weights"][0]["mean"] == "0.5"


# --- in the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip(
            f"no browser: {CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install "
            "chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="protocaffe-chromium-")
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--window-size=1400,900",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, page: Path) -> None:
    browser.get(page.resolve().as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@needs_dot
def test_fcn8s_in_chromium(browser, pages: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _open(browser, pages["fcn8s"])
    data = _page_data(pages["fcn8s"].read_text())
    rows = browser.find_elements(By.CSS_SELECTOR, "#layers tbody tr")
    assert len(rows) == len(data["layers"]) == 47  # every layer is listed...
    drawn = {g.get_attribute("id") for g in browser.find_elements(By.CSS_SELECTOR, "g.node")}
    assert {la["node"] for la in data["layers"]} <= drawn  # ...and drawn
    # Clicking a node shows its source lines.
    score = next(la for la in data["layers"] if la["name"] == "score_pool4c")
    box = browser.find_element(By.ID, "search")
    box.send_keys("score_pool4c\n")  # Enter brings the first match into view
    node = browser.find_element(By.ID, score["node"])
    pane = browser.find_element(By.ID, "graph").rect
    r = node.rect
    assert pane["x"] <= r["x"] and r["x"] + r["width"] <= pane["x"] + pane["width"]
    assert pane["y"] <= r["y"] and r["y"] + r["height"] <= pane["y"] + pane["height"]
    browser.execute_script("select(0, false)")  # another layer, the view left where it is
    assert browser.find_element(By.ID, "side").get_attribute("data-layer") == "input"
    node.click()
    side = browser.find_element(By.ID, "side").text
    assert 'name: "score_pool4c"' in side and "offset: 5" in side
    assert f"{score['source'][0][0]}" in side and "1x21x34x34" in side
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)  # an emptied search shows every row again
    # The table sorts: by MACs, descending on the second click.
    head = browser.find_elements(By.CSS_SELECTOR, "#layers th")[5]
    head.click()
    head.click()
    names = [
        r.find_elements(By.TAG_NAME, "td")[1].text
        for r in browser.find_elements(By.CSS_SELECTOR, "#layers tbody tr")
    ]
    by_macs = sorted(data["layers"], key=lambda la: -la["macs"])
    assert names[0] == by_macs[0]["name"] == "fc6"
    # Search narrows the table and marks the matching nodes.
    box.send_keys("crop")
    visible = [
        r for r in browser.find_elements(By.CSS_SELECTOR, "#layers tbody tr") if r.is_displayed()
    ]
    assert len(visible) == 3
    assert len(browser.find_elements(By.CSS_SELECTOR, "g.node.match")) == 3
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


@needs_dot
def test_diagnostic_click_selects_its_layer(browser, pages: dict[str, Path]) -> None:
    from selenium.webdriver.common.by import By

    _open(browser, pages["small"])
    item = browser.find_element(By.CSS_SELECTOR, "#diagnostics li.warning")
    assert "offset 2 misaligns" in item.text
    item.click()
    assert browser.find_element(By.ID, "side").get_attribute("data-layer") == "crop"
    assert browser.find_elements(By.CSS_SELECTOR, "g.node.selected")
    # The fit button and the wheel zoom change the view box without errors.
    svg = browser.find_element(By.CSS_SELECTOR, "#graph svg")
    browser.find_element(By.ID, "fit").click()

    def view_box() -> str:
        return browser.execute_script("return arguments[0].getAttribute('viewBox')", svg)

    fitted = view_box()
    browser.execute_script(
        "arguments[0].dispatchEvent(new WheelEvent('wheel', {deltaY: -100, clientX: 300,"
        " clientY: 200, bubbles: true, cancelable: true}))",
        svg,
    )
    assert view_box() != fitted
    assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
