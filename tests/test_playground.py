"""The playground (/playground) in a real headless Chromium, driven by Playwright, against the real
server on loopback. Every request that would leave the machine is blocked and recorded, and every
console error and uncaught exception is collected: each test ends with both lists empty."""

from __future__ import annotations

import io
import itertools
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, Route, expect, sync_playwright

from models.checkpoint import (
    MLPArchitecture,
    ModelConfig,
    VectorInput,
    build_model,
    save_checkpoint,
)
from tests.conftest import live_server, settings_for, write_tiny_repository
from tests.numbers import LOG_PROB_TOLERANCE

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# BATCHSERVE_SCREENSHOTS=1 also writes the screenshots the README shows here.
SCREENSHOTS = Path(__file__).resolve().parent.parent / "docs" / "images"
PAD = 280  # the drawing pad's side in canvas pixels
KEY = "playground-test-key"
# Chromium's own line for a fetch answered 4xx; the tests that ask for a 4xx allow its status.
FAILED_LOAD = "Failed to load resource: the server responded with a status of {status}"


def ellipse(cx: float, cy: float, rx: float, ry: float) -> list[tuple[float, float]]:
    return [
        (cx + rx * math.sin(2 * math.pi * i / 24), cy - ry * math.cos(2 * math.pi * i / 24))
        for i in range(25)
    ]


# Strokes (points in pad pixels, one list per stroke) as a person would draw each digit.
DIGITS: dict[str, list[list[tuple[float, float]]]] = {
    "0": [ellipse(140, 140, 60, 95)],
    "1": [[(145, 45), (140, 235)]],
    "2": [[(80, 90), (110, 55), (160, 50), (195, 85), (185, 130), (80, 230), (210, 230)]],
    "3": [
        [
            (85, 60),
            (150, 45),
            (190, 80),
            (170, 125),
            (125, 140),
            (180, 160),
            (195, 200),
            (150, 235),
            (85, 220),
        ]
    ],
    "4": [[(160, 40), (75, 170), (215, 170)], [(175, 100), (175, 245)]],
    "7": [[(75, 55), (205, 55), (120, 240)]],
}


@dataclass
class Tab:
    """A page of the playground, with what went wrong in it."""

    page: Page
    errors: list[str] = field(default_factory=list)  # console errors, uncaught exceptions
    outside: list[str] = field(default_factory=list)  # requests that would have left loopback

    def panel(self, model: str) -> Locator:
        return self.page.locator(f'section[data-model="{model}"]')

    def assert_clean(self, *allowed_statuses: int) -> None:
        """No request left the machine, and no console error but Chromium's own line for a 4xx
        that the test asked for."""
        allowed = tuple(FAILED_LOAD.format(status=s) for s in allowed_statuses)
        assert [e for e in self.errors if not e.startswith(allowed or ("\0",))] == []
        assert self.outside == []


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    path = next((p for p in map(shutil.which, BROWSERS) if p), None)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must have chromium (apt-get install chromium)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    with sync_playwright() as playwright:
        # A proxy that is not there: whatever the routes below might let through finds nothing.
        args = ["--no-sandbox", "--proxy-server=http://127.0.0.1:9"]
        browser = playwright.chromium.launch(executable_path=path, args=args)
        yield browser
        browser.close()


@contextmanager
def playground(
    browser: Browser, server: str, width: int = 1280, touch: bool = False, mount: str = ""
) -> Iterator[Tab]:
    """The page loaded at `width` CSS pixels (with a touch screen when `touch`). With `mount`,
    the page is asked for under that path, as a proxy in front would serve it: the test strips
    the prefix from every request (one without it is a request that missed the proxy)."""
    context = browser.new_context(viewport={"width": width, "height": 900}, has_touch=touch)
    page = context.new_page()
    tab = Tab(page)

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if not url.startswith(f"{server}{mount}/"):
            tab.outside.append(url)
            route.abort()
        elif mount:
            route.fulfill(response=route.fetch(url=server + url[len(server) + len(mount) :]))
        else:
            route.continue_()

    context.route("**/*", only_loopback)
    page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda exc: tab.errors.append(f"uncaught: {exc}"))
    try:
        page.goto(f"{server}{mount}/playground")
        yield tab
    finally:
        context.close()


def draw(tab: Tab, strokes: list[list[tuple[float, float]]], touch: bool = False) -> str:
    """Draws on mnist-mlp's pad with the mouse, or with a finger; the label the page predicts."""
    panel = tab.panel("mnist-mlp")
    panel.get_by_role("button", name="Clear").click()
    box = panel.locator("canvas.pad").bounding_box()
    assert box is not None
    scale = box["width"] / PAD
    for points in strokes:
        path = [(box["x"] + x * scale, box["y"] + y * scale) for x, y in points]
        (finger if touch else mouse)(tab.page, path)
    return panel.locator(f'.prediction[data-strokes="{len(strokes)}"] .label').inner_text()


def mouse(page: Page, path: list[tuple[float, float]]) -> None:
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()


def finger(page: Page, path: list[tuple[float, float]]) -> None:
    """A stroke as touch events (Playwright's touchscreen only taps; Chromium's own input)."""
    cdp = page.context.new_cdp_session(page)
    touch = "Input.dispatchTouchEvent"
    cdp.send(touch, {"type": "touchStart", "touchPoints": [{"x": path[0][0], "y": path[0][1]}]})
    for (x0, y0), (x1, y1) in itertools.pairwise(path):
        for t in (i / 6 for i in range(1, 7)):
            point = {"x": x0 + (x1 - x0) * t, "y": y0 + (y1 - y0) * t}
            cdp.send(touch, {"type": "touchMove", "touchPoints": [point]})
    cdp.send(touch, {"type": "touchEnd", "touchPoints": []})
    cdp.detach()


def type_into(tab: Tab, model: str, text: str) -> Locator:
    tab.panel(model).get_by_role("textbox").press_sequentially(text, delay=20)
    return tab.panel(model)


# -- the image classifier -------------------------------------------------------------------------


@pytest.mark.parametrize("digit", sorted(DIGITS))
def test_a_digit_drawn_with_the_mouse_is_recognised(
    chromium: Browser, shipped_server: str, digit: str
) -> None:
    with playground(chromium, shipped_server) as tab:
        assert draw(tab, DIGITS[digit]) == digit
        bars = tab.panel("mnist-mlp").locator(".bars li")
        assert bars.count() == 10
        assert tab.panel("mnist-mlp").locator(".bars li.top").get_attribute("data-label") == digit
        tab.assert_clean()


def test_what_is_sent_is_cropped_scaled_into_20x20_and_centred_by_mass(
    chromium: Browser, shipped_server: str
) -> None:
    # A small 7 in the pad's top-left corner is sent as MNIST would hold it: the same digit.
    small_seven: list[list[tuple[float, float]]] = [[(20, 20), (70, 20), (40, 90)]]
    with playground(chromium, shipped_server) as tab:
        assert draw(tab, small_seven) == "7"
        sent = (
            tab.panel("mnist-mlp")
            .locator("canvas.preview")
            .evaluate("c => Array.from(c.getContext('2d').getImageData(0, 0, 28, 28).data)")
        )
        ink = [[sent[4 * (28 * y + x)] / 255 for x in range(28)] for y in range(28)]
        rows = [y for y in range(28) if any(ink[y])]
        columns = [x for x in range(28) if any(ink[y][x] for y in range(28))]
        assert max(len(rows), len(columns)) == 20  # the taller side fills the 20x20 box
        mass = sum(map(sum, ink))
        centre_x = sum(v * (x + 0.5) for row in ink for x, v in enumerate(row)) / mass
        centre_y = sum(v * (y + 0.5) for y, row in enumerate(ink) for v in row) / mass
        assert abs(centre_x - 14) <= 0.5 and abs(centre_y - 14) <= 0.5
        assert max(map(max, ink)) == 1.0
        # Undo leaves nothing drawn: no request, no chart.
        tab.panel("mnist-mlp").get_by_role("button", name="Undo").click()
        assert tab.panel("mnist-mlp").locator('.prediction[data-strokes="0"]').inner_text() == (
            "Draw a digit."
        )
        assert tab.panel("mnist-mlp").locator(".bars").count() == 0
        tab.assert_clean()


# -- the text classifier --------------------------------------------------------------------------


def test_typing_a_surname_shows_its_countries_with_one_request_in_flight(
    chromium: Browser, shipped_server: str
) -> None:
    expected = httpx.post(
        f"{shipped_server}/v1/models/names-rnn/predict", json={"inputs": ["Nakamura"], "top_k": 5}
    ).json()["predictions"][0]["top_k"]
    with playground(chromium, shipped_server) as tab:
        in_flight: list[int] = []
        tab.page.on("request", lambda r: in_flight.append(1) if "/predict" in r.url else None)
        tab.page.on(
            "requestfinished", lambda r: in_flight.append(-1) if "/predict" in r.url else None
        )
        panel = type_into(tab, "names-rnn", "Nakamura")
        chart = panel.locator('.chart[data-for="Nakamura"]')
        assert chart.locator("li.top .label").inner_text() == "JP"
        labels = chart.locator(".label").all_inner_texts()
        assert labels == [entry["label"] for entry in expected]
        shown = [float(v.rstrip("%")) / 100 for v in chart.locator(".value").all_inner_texts()]
        assert all(
            abs(s - e["probability"]) <= 0.0005 for s, e in zip(shown, expected, strict=True)
        )
        # Eight keystrokes: fewer requests (debounced), never two at once.
        depth = [sum(in_flight[: i + 1]) for i in range(len(in_flight))]
        assert max(depth) == 1
        assert 1 <= in_flight.count(1) < len("Nakamura")
        tab.assert_clean()


def test_an_api_error_is_shown_as_the_api_words_it(chromium: Browser, shipped_server: str) -> None:
    answer = httpx.post(f"{shipped_server}/v1/models/names-rnn/predict", json={"inputs": ["Ab1"]})
    assert answer.status_code == 422
    with playground(chromium, shipped_server) as tab:
        panel = type_into(tab, "names-rnn", "Ab1")
        assert panel.locator('.chart[data-for="Ab1"] .error').inner_text() == answer.json()["error"]
        tab.assert_clean(422)


# -- the language model ---------------------------------------------------------------------------


def test_each_character_shows_the_log_prob_that_the_score_endpoint_gives(
    chromium: Browser, shipped_server: str
) -> None:
    name = "Kowalski"
    scored = httpx.post(
        f"{shipped_server}/v1/models/names-lm/score", json={"inputs": [name], "per_token": True}
    ).json()["scores"][0]
    echoed = httpx.post(
        f"{shipped_server}/v1/completions",
        json={
            "model": "names-lm",
            "prompt": name,
            "echo": True,
            "logprobs": 5,
            "max_tokens": 1,
            "temperature": 0,
        },
    ).json()["choices"][0]["logprobs"]["top_logprobs"]
    with playground(chromium, shipped_server) as tab:
        panel = type_into(tab, "names-lm", name)
        tokens = panel.locator(f'.tokens[data-for="{name}"] .token')
        assert len(scored["tokens"]) == len(name) + 1  # and the end
        expect(tokens).to_have_count(len(scored["tokens"]))
        tooltip = panel.locator(".tooltip")
        for i, expected in enumerate(scored["tokens"]):
            tokens.nth(i).hover()
            found = re.search(r"log p = (-?\d+\.\d+)", tooltip.inner_text())
            assert found is not None
            assert abs(float(found.group(1)) - expected["log_prob"]) <= LOG_PROB_TOLERANCE
            shown = tooltip.locator(".alternatives td:first-child").all_inner_texts()
            assert shown == [t.replace("</s>", "⏎ end") for t in echoed[i]]
        assert tokens.last.inner_text() == "⏎"
        totals = panel.locator(".totals").inner_text()
        numbers = re.fullmatch(r"log P = (\S+) · (\d+) tokens · perplexity (\S+)", totals)
        assert numbers is not None
        assert abs(float(numbers.group(1)) - scored["log_prob"]) <= LOG_PROB_TOLERANCE
        assert int(numbers.group(2)) == scored["num_tokens"]
        assert abs(float(numbers.group(3)) - scored["perplexity"]) <= 1e-3
        tab.assert_clean()


def sampled(server: str, prompt: str, seed: int) -> str:
    """The continuation /v1/completions streams for the page's request."""
    request = {
        "model": "names-lm",
        "prompt": prompt,
        "max_tokens": 16,
        "temperature": 1.0,
        "seed": seed,
        "logprobs": 5,
        "stream": True,
    }
    text = ""
    with httpx.stream("POST", f"{server}/v1/completions", json=request) as answer:
        for line in answer.iter_lines():
            if line.startswith("data: {"):
                text += httpx.Response(200, content=line[6:]).json()["choices"][0]["text"]
    return text


def test_continue_streams_a_sampled_continuation_and_stops(
    chromium: Browser, shipped_server: str
) -> None:
    prompt = "Mac"
    seed = next(s for s in range(50) if len(sampled(shipped_server, prompt, s)) >= 5)
    expected = sampled(shipped_server, prompt, seed)
    with playground(chromium, shipped_server) as tab:
        panel = type_into(tab, "names-lm", prompt)
        panel.locator(f'.tokens[data-for="{prompt}"]').wait_for()
        panel.get_by_role("spinbutton", name="seed").fill(str(seed))
        # Count the separate DOM updates that add streamed characters while the stream runs.
        panel.locator(".tokens").evaluate(
            """tokens => {
              const state = tokens.closest('section').querySelector('.stream-state');
              window.streamedUpdates = 0;
              new MutationObserver(() => {
                if (state.dataset.state === 'streaming') window.streamedUpdates++;
              }).observe(tokens, { childList: true });
            }"""
        )
        panel.get_by_role("button", name="Continue").click()
        panel.locator('.stream-state[data-state="done"]').wait_for()
        assert panel.get_by_role("textbox").input_value() == prompt + expected
        assert tab.page.evaluate("window.streamedUpdates") >= 2  # arrived in pieces
        assert "stopped by" in panel.locator(".stream-state").inner_text()
        new = "".join(panel.locator(".token.new").all_inner_texts())
        assert new.removesuffix("⏎") == expected
        assert panel.get_by_role("button", name="Continue").is_enabled()
        tab.assert_clean()


# -- keys, and models of other kinds --------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The tiny models, two of a kind the page has no panel for, and auth on."""
    repository = write_tiny_repository(tmp_path_factory.mktemp("repository"))
    torch.manual_seed(0)
    for name, width, labels in (("four-features", 4, ["a", "b", "c"]), ("long-vector", 20, [])):
        config = ModelConfig(
            name=name,
            task="classify",
            architecture=MLPArchitecture(layer_sizes=[width, 5, len(labels) or 2]),
            input=VectorInput(shape=[width]),
            labels=labels or ["no", "yes"],
        )
        save_checkpoint(repository / name / "1", build_model(config), config)
    with live_server(settings_for(repository, api_keys=[KEY])) as url:
        yield url


def enter_key(tab: Tab, key: str) -> None:
    tab.page.locator("#key").fill(key)
    tab.page.get_by_role("button", name="Use key").click()


def test_with_auth_on_the_page_asks_for_the_key_and_says_when_it_is_wrong(
    chromium: Browser, keyed_server: str
) -> None:
    with playground(chromium, keyed_server) as tab:
        prompt = tab.page.locator("#key-form")
        prompt.wait_for()
        # The message follows the page's first request: wait for it, do not race it.
        expect(prompt.locator("#key-message")).to_contain_text("missing API key")
        assert tab.page.locator("section.panel").count() == 0
        enter_key(tab, "not-the-key")
        prompt.locator("#key-message", has_text="wrong API key").wait_for()
        assert prompt.is_visible() and tab.page.locator("section.panel").count() == 0
        enter_key(tab, KEY)
        prompt.wait_for(state="hidden")
        expect(tab.page.locator("section.panel")).to_have_count(5)
        panel = type_into(tab, "names-rnn", "Rossi")
        expect(panel.locator('.chart[data-for="Rossi"] li')).to_have_count(3)
        # The key stays in the tab's memory: nothing stored, and a reload asks again.
        assert tab.page.evaluate("localStorage.length + sessionStorage.length") == 0
        tab.page.reload()
        expect(prompt.locator("#key-message")).to_contain_text("missing API key")
        tab.assert_clean(401)


def test_a_model_of_another_kind_gets_a_form_from_its_metadata_and_a_table(
    chromium: Browser, keyed_server: str
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    features = [0.5, -1.0, 2.0, 0.25]
    expected = httpx.post(
        f"{keyed_server}/v2/models/four-features/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": features}]},
        headers=auth,
    ).json()["outputs"]
    with playground(chromium, keyed_server) as tab:
        enter_key(tab, KEY)
        panel = tab.panel("four-features")
        boxes = panel.get_by_role("spinbutton")
        expect(boxes).to_have_count(4)
        for i, value in enumerate(features):
            boxes.nth(i).fill(str(value))
        panel.get_by_role("button", name="Run").click()
        table = panel.locator('table[data-output="probabilities"]')
        expect(table.locator("th")).to_have_text(["a", "b", "c"])
        shown = [float(v) for v in table.locator("td").all_inner_texts()]
        probabilities = next(o for o in expected if o["name"] == "probabilities")["data"]
        assert all(abs(s - e) <= 1e-5 for s, e in zip(shown, probabilities, strict=True))
        label = next(o for o in expected if o["name"] == "label")["data"]
        assert panel.locator('table[data-output="label"] td').all_inner_texts() == label
        # A long vector is pasted as CSV; one value short, the API's words say so.
        long = tab.panel("long-vector")
        long.get_by_role("textbox").fill(", ".join(["1"] * 19))
        long.get_by_role("button", name="Run").click()
        error = long.locator(".result .error").inner_text()
        direct = httpx.post(
            f"{keyed_server}/v2/models/long-vector/infer",
            json={
                "inputs": [
                    {"name": "input", "datatype": "FP32", "shape": [1, 19], "data": [1.0] * 19}
                ]
            },
            headers=auth,
        )
        assert direct.status_code == 400 and error == direct.json()["error"]
        long.get_by_role("textbox").fill("\n".join(["1, 2, 3, 4"] * 5))
        long.get_by_role("button", name="Run").click()
        expect(long.locator('table[data-output="probabilities"] td')).to_have_count(2)
        tab.assert_clean(400, 401)


def answer_with(body: dict[str, Any]) -> Callable[[Route], None]:
    return lambda route: route.fulfill(json=body)


def test_a_kind_the_page_has_never_seen_still_gets_a_form_and_its_errors(
    chromium: Browser, keyed_server: str
) -> None:
    # Kinds other helpers may add (a regression over numeric sequences) described the way /v1
    # and /v2 describe models; the page's answer to them, the API's real answer to the request.
    v1 = {"name": "four-features", "task": "regress", "state": "ready", "labels": [],
          "input": {"kind": "sequence", "features": 3}}  # fmt: skip
    v2 = {"name": "four-features", "versions": ["1"], "platform": "pytorch",
          "inputs": [{"name": "steps", "datatype": "FP32", "shape": [-1, -1, 3]},
                     {"name": "horizon", "datatype": "INT32", "shape": [-1]}],
          "outputs": [{"name": "forecast", "datatype": "FP32", "shape": [-1, -1]}]}  # fmt: skip
    with playground(chromium, keyed_server) as tab:
        for path, body in (("v1", v1), ("v2", v2)):
            tab.page.route(f"{keyed_server}/{path}/models/four-features", answer_with(body))
        enter_key(tab, KEY)
        panel = tab.panel("four-features")
        expect(panel).to_have_attribute("data-panel", "genericPanel")
        steps = panel.get_by_role("textbox", name="steps")
        assert steps.input_value() == "0, 0, 0"
        steps.fill("1, 2, 3\n4, 5, 6")
        panel.get_by_role("spinbutton", name="horizon[0]").fill("2")
        with tab.page.expect_request("**/infer") as sent:
            panel.get_by_role("button", name="Run").click()
        request = sent.value.post_data_json
        assert request is not None
        inputs = request["inputs"]
        assert [(i["name"], i["shape"], i["data"]) for i in inputs] == [
            ("steps", [1, 2, 3], [1, 2, 3, 4, 5, 6]),
            ("horizon", [1], [2]),
        ]
        error = panel.locator(".result .error").inner_text()
        direct = httpx.post(
            f"{keyed_server}/v2/models/four-features/infer",
            json={"inputs": inputs},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert direct.status_code == 400 and error == direct.json()["error"]
        tab.assert_clean(400, 401)


def test_the_docs_page_links_to_the_playground(chromium: Browser, shipped_server: str) -> None:
    with playground(chromium, shipped_server) as tab:
        tab.page.goto(f"{shipped_server}/docs")
        link = tab.page.get_by_role("link", name="The playground")
        assert link.evaluate("a => a.href") == f"{shipped_server}/playground"
        tab.page.goto(link.evaluate("a => a.href"))  # Swagger UI opens it in a new tab
        expect(tab.page.locator("section.panel")).to_have_count(3)
        tab.assert_clean()


def test_the_page_works_behind_a_proxy_that_mounts_it_under_a_path(
    chromium: Browser, shipped_server: str
) -> None:
    # Its links and API calls are relative: under /ml/ they all go to /ml/...
    with playground(chromium, shipped_server, mount="/ml") as tab:
        expect(tab.page.locator("section.panel")).to_have_count(3)
        panel = type_into(tab, "names-rnn", "Nakamura")
        assert panel.locator('.chart[data-for="Nakamura"] li.top .label').inner_text() == "JP"
        assert draw(tab, DIGITS["1"]) == "1"
        tab.assert_clean()


# -- the layout, on a phone and on a desk ---------------------------------------------------------


def pixels(shot: Image.Image, where: Locator) -> np.ndarray:
    """The screenshot's RGB pixels under an element, one row per pixel."""
    box = where.bounding_box()
    assert box is not None
    area = (box["x"], box["y"], box["x"] + box["width"], box["y"] + box["height"])
    crop = shot.crop(area).convert("RGB")
    return np.asarray(crop, dtype=np.int32).reshape(-1, 3)


def count_near(colours: np.ndarray, target: tuple[int, int, int]) -> int:
    return int((np.abs(colours - np.array(target)).sum(axis=1) < 60).sum())


ACCENT = (0x22, 0x66, 0xCC)  # the most likely label's bar
BANDS = [(0x2E, 0x9E, 0x5B), (0xA6, 0xC6, 0x4C), (0xF0, 0xA9, 0x3B), (0xD9, 0x45, 0x3A)]


@pytest.mark.parametrize("width", [375, 1440])
def test_the_page_works_on_a_phone_and_on_a_desk(
    chromium: Browser, shipped_server: str, width: int
) -> None:
    phone = width < 600
    with playground(chromium, shipped_server, width, touch=phone) as tab:
        assert draw(tab, DIGITS["7"], touch=phone) == "7"  # a phone's is drawn with a finger
        type_into(tab, "names-rnn", "Nakamura").locator('[data-for="Nakamura"] li').first.wait_for()
        type_into(tab, "names-lm", "Kowalski").locator(
            '[data-for="Kowalski"] .token'
        ).first.wait_for()
        assert tab.page.evaluate("document.documentElement.scrollWidth") <= width
        tab.page.evaluate("window.scrollTo(0, 0)")
        png = tab.page.screenshot(full_page=True)
        if os.environ.get("BATCHSERVE_SCREENSHOTS"):
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / f"playground-{width}.png").write_bytes(png)
        shot = Image.open(io.BytesIO(png))
        assert shot.width == width
        pad = pixels(shot, tab.panel("mnist-mlp").locator("canvas.pad"))
        ink = (pad.sum(axis=1) < 150).mean()
        assert 0.02 < ink < 0.5  # a stroke on white, neither blank nor filled
        preview = pixels(shot, tab.panel("mnist-mlp").locator("canvas.preview"))
        assert (preview.sum(axis=1) > 600).sum() > 20  # the digit as sent, white on black
        for model in ("mnist-mlp", "names-rnn"):
            chart = pixels(shot, tab.panel(model).locator(".bars"))
            assert count_near(chart, ACCENT) > 300  # the top bar, drawn
        tokens = pixels(shot, tab.panel("names-lm").locator(".tokens"))
        assert sum(count_near(tokens, band) > 20 for band in BANDS) >= 2
        tab.assert_clean()


def test_the_page_and_its_files_come_from_batchserve_alone(shipped_server: str) -> None:
    page = httpx.get(f"{shipped_server}/playground")
    assert page.status_code == 200
    files = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "static/playground/main.js" in files
    modules = re.findall(
        r'from "\./([\w.]+)"', httpx.get(f"{shipped_server}/static/playground/main.js").text
    )
    assert len(modules) >= 5
    for path in ["playground", *files, *(f"static/playground/{m}" for m in modules)]:
        answer = httpx.get(f"{shipped_server}/{path}")
        assert answer.status_code == 200, path
        assert not re.search(r"\b(?:https?:)?//[\w.-]+\.\w", answer.text), path  # no other host
        if path.startswith(("playground", "static/playground")):
            assert "default-src 'self'" in answer.headers["content-security-policy"]
    # Only the page's own files: no path from a request reaches the disk.
    for name in ("..%2Fplayground.py", "%2E%2E%2F%2E%2E%2Fmain.py", "missing.js"):
        assert httpx.get(f"{shipped_server}/static/playground/{name}").status_code == 404
