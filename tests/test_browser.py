"""What the annotator sees, in a real browser: Label Studio 1.23.2 (the shared test server), the
backend on the shipped model, and Debian's Chromium driven by Selenium through Debian's
chromedriver (nothing is downloaded at test time; .ci/run installs both packages).

One project is pre-labelled with "Retrieve predictions". The test opens a task in the labeling
view and checks that the regions panel lists the predicted regions with their labels and scores
and that the canvas shows the masks (pixels over the masks change when the regions are hidden, the
rest does not); then it opens the Data Manager, turns on its "Prediction score" column and checks
that every task shows its prediction's score. Screenshots go to SEEDIFF_SCREENSHOTS (default: a
temporary folder), which the test prints.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import requests
from PIL import Image

from label_studio_server import TOKEN, data_manager_scores
from seediff_core.scenes import TEST_SEEDS, make_scene, render

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
LABELS = ["circle", "square", "triangle", "star"]
SCENES = 3
PASSWORD = "seediff-e2e-password"  # tests/label_studio_server.py's admin


@pytest.fixture(scope="module")
def browser(label_studio):
    """Chromium, logged in to Label Studio as its admin."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed: apt-get install chromium chromium-driver (as .ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # The machine has no network beyond loopback: background services would only fail and retry.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
                 "--window-size=1400,900", "--force-device-scale-factor=1"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        _log_in(driver, label_studio)
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SEEDIFF_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {folder}")
    return folder


@pytest.fixture(scope="module")
def project(label_studio, ls_backend):
    """A pre-labelled project: held-out scenes, the backend connected (interactive, with a smart
    keypoint tool), "Retrieve predictions" run. Returns (id, {task id: prediction})."""
    from label_studio_sdk import LabelStudio

    client = LabelStudio(base_url=label_studio, api_key=TOKEN)
    labels = "".join(f'<Label value="{label}"/>' for label in LABELS)
    config = (f'<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">{labels}'
              f'</BrushLabels><KeyPointLabels name="click" toName="image" smart="true">{labels}</KeyPointLabels></View>')
    created = client.projects.create(title="seediff in the browser", label_config=config)
    files = {}
    for i, seed in enumerate(TEST_SEEDS[100 : 100 + SCENES]):
        buffer = io.BytesIO()
        Image.fromarray(render(make_scene(seed), 256).image).save(buffer, "PNG")
        files[f"file{i}"] = (f"scene{i}.png", buffer.getvalue(), "image/png")
    imported = requests.post(f"{label_studio}/api/projects/{created.id}/import", files=files,
                             headers={"Authorization": f"Token {TOKEN}"}, timeout=60)
    assert imported.status_code == 201, imported.text
    client.ml.create(project=created.id, url=ls_backend[0], title="seediff", is_interactive=True)
    client.actions.create(id="retrieve_tasks_predictions", project=created.id, selected_items={"all": True, "excluded": []})
    assert sum(s is not None for s in data_manager_scores(label_studio, created.id, SCENES).values()) == SCENES
    predictions = {t.id: list(client.predictions.list(task=t.id))[0] for t in client.tasks.list(project=created.id)}
    return created.id, predictions


def _log_in(browser, label_studio: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{label_studio}/user/login/")
    _wait_for(browser, "input[name=email]")
    browser.find_element(By.NAME, "email").send_keys("admin@example.com")
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    deadline = time.time() + 30
    while "/user/login" in browser.current_url and time.time() < deadline:
        time.sleep(0.5)
    assert "/user/login" not in browser.current_url, "the login did not go through"


def _wait_for(browser, selector: str, count: int = 1, timeout: float = 60):
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while time.time() < deadline:
        found = browser.find_elements(By.CSS_SELECTOR, selector)
        if len(found) >= count:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{selector!r}: fewer than {count} on {browser.current_url} after {timeout} s")


def _screen(browser, path: Path | None = None) -> np.ndarray:
    """The page as (H, W, 3) int16 RGB; saved to ``path`` as a small PNG (0.7x, 256 colours)."""
    picture = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    if path is not None:
        small = picture.resize((int(picture.width * 0.7), int(picture.height * 0.7)), Image.LANCZOS)
        small.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return np.asarray(picture).astype(np.int16)


def _shown_image_rect(browser) -> tuple[int, int, int, int]:
    """(x, y, width, height) in screen pixels of the image being labelled (the largest <img>)."""
    rect = browser.execute_script(
        "const imgs = Array.from(document.querySelectorAll('img')).map(e => e.getBoundingClientRect())"
        ".filter(r => r.width > 150); imgs.sort((a, b) => b.width * b.height - a.width * a.height);"
        "const r = imgs[0]; return [r.x, r.y, r.width, r.height];")
    return tuple(int(round(v)) for v in rect)


def test_the_annotator_sees_the_masks_with_labels_and_scores(label_studio, project, browser, screenshots):
    from label_studio_sdk.converter.brush import decode_rle
    from selenium.webdriver.common.by import By

    project_id, predictions = project
    task_id, prediction = next((t, p) for t, p in predictions.items() if p.result)
    browser.get(f"{label_studio}/projects/{project_id}/data?task={task_id}")
    items = _wait_for(browser, ".lsf-outliner-item", count=len(prediction.result))
    time.sleep(2)  # the canvas draws the masks after the list appears
    listed = Counter((item.find_element(By.CSS_SELECTOR, ".lsf-outliner-item__title").text,
                      item.find_element(By.CSS_SELECTOR, ".lsf-outliner-item__control_type_score").text) for item in items)
    predicted = Counter((r["value"]["brushlabels"][0], f"{r['score']:.2f}") for r in prediction.result)
    assert listed == predicted, (listed, predicted)

    shown = _screen(browser, screenshots / "task.png")
    browser.find_element(By.CSS_SELECTOR, 'button[aria-label="Hide all regions"]').click()
    time.sleep(1.5)
    hidden = _screen(browser)
    x, y, width, height = _shown_image_rect(browser)
    assert width > 300 and height > 300, (width, height)
    union = np.zeros((256, 256), np.uint8)
    for region in prediction.result:
        union |= np.reshape(decode_rle(region["value"]["rle"]), (256, 256, 4))[:, :, 3]
    on_screen = cv2.resize(union, (width, height), interpolation=cv2.INTER_NEAREST) > 0
    inside = cv2.erode(on_screen.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # away from the outlines
    outside = cv2.dilate(on_screen.astype(np.uint8), np.ones((15, 15), np.uint8)) == 0
    change = np.abs(shown - hidden)[y : y + height, x : x + width].sum(axis=2)
    # The masks are drawn over the objects: hiding them changes the pixels under them, and only those.
    assert change[inside].mean() > 20, change[inside].mean()
    assert change[outside].mean() < 2, change[outside].mean()
    assert (change[inside] > 10).mean() > 0.9


def test_the_data_manager_lists_the_prediction_scores(label_studio, project, browser, screenshots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    project_id, predictions = project
    browser.get(f"{label_studio}/projects/{project_id}/data")
    _wait_for(browser, ".lsf-table-row", count=len(predictions))
    browser.find_element(By.XPATH, "//button[.//span[normalize-space()='Columns']]").click()
    browser.find_element(By.XPATH, "//label[.//span[normalize-space()='Prediction score']]").click()
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)  # closes the menu (a click could open a task)
    heads = _wait_for(browser, '.lsf-table-head [data-id="tasks:predictions_score"]')
    time.sleep(1)
    _screen(browser, screenshots / "data-manager.png")
    columns = [h.get_attribute("data-id") for h in browser.find_elements(By.CSS_SELECTOR, ".lsf-table-head [data-id]")]
    score_column, id_column = columns.index("tasks:predictions_score"), columns.index("tasks:id")
    assert heads
    shown = {}
    for row in browser.find_elements(By.CSS_SELECTOR, ".lsf-table-row"):
        cells = [c.text.strip() for c in row.find_elements(By.CSS_SELECTOR, ":scope > div.lsf-table__cell")]
        shown[int(cells[id_column])] = cells[score_column]
    assert set(shown) == set(predictions), shown
    for task_id, prediction in predictions.items():
        assert shown[task_id] and abs(float(shown[task_id]) - prediction.score) < 0.01, (shown, prediction.score)
