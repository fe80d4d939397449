"""eval.py for people: reproducible sampled actions, a summary that says what ran, an annotated GIF,
and a self-contained HTML page whose step slider walks through each episode (checked in headless
Chromium, Debian's package, through Selenium, when they are installed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import eval as evaluate
from conftest import run_main
from tests.tiny_lms import tiny_gpt2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def helm_run(tmp_path_factory):
    experiments = tmp_path_factory.mktemp("eval_pages") / "experiments"
    lm = tiny_gpt2(str(tmp_path_factory.mktemp("lm") / "gpt2"))
    assert run_main("--var", "model=HELM", "--var", "env=CueRecall-D1-v0", "--var", f"lm={lm}", "--var", "mem_len=8",
                    "--run-id", "r", experiments=experiments) == 0
    return experiments / "HELM" / "CueRecall-D1-v0" / "r"


def test_sampled_actions_are_reproducible_and_the_summary_says_what_ran(helm_run, tmp_path):
    outs = []
    for name in ("a", "b"):
        assert evaluate.main(["--ckpt-path", str(helm_run), "--n-episodes", "12", "--n-envs", "3", "--no-progress",
                              "--seed", "7", "--torch-threads", "1", "--out", str(tmp_path / name)]) == 0
        outs.append(np.load(tmp_path / name / "episodes.npz"))
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0].files if k.startswith("actions"))
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert (summary["seed"], summary["n_envs"], summary["actions"], summary["torch_threads"]) == (7, 3, "sampled", 1)
    assert summary["checkpoint"].endswith("ckpt_best.pt") and summary["step"] == 32  # the best full window


def test_the_progress_bar_counts_steps_during_episodes(helm_run, tmp_path, capsys):
    assert evaluate.main(["--ckpt-path", str(helm_run), "--n-episodes", "2", "--out", str(tmp_path / "e")]) == 0
    err = capsys.readouterr().err
    assert "step [" in err and "2/2 episodes" in err  # env steps are the unit, finished episodes the postfix


def test_the_gif_frames_name_the_episode_step_action_and_return(helm_run, tmp_path):
    rows = evaluate.step_rows({"actions": [0, 1], "rewards": [0.0, 1.0], "trace": [{"words": ["a"]}, {"words": ["b"]}]},
                              ["answer red", "answer blue"])
    assert [r["action"] for r in rows] == ["answer red", "answer blue"] and rows[-1]["return"] == 1.0
    assert evaluate.caption(3, rows[1]) == "episode 3  step 1  answer blue  reward 1  return 1.00  memory: b"
    assert evaluate.main(["--ckpt-path", str(helm_run), "--n-episodes", "2", "--video", "--gif-fps", "2",
                          "--no-progress", "--out", str(tmp_path / "g")]) == 0
    from PIL import Image

    gif = Image.open(tmp_path / "g" / "episodes.gif")
    assert gif.info["duration"] == 500 and gif.n_frames == 6  # half a second each; 2 episodes x 3 steps


def test_full_view_is_for_minigrid_only(helm_run, tmp_path, capsys):
    assert evaluate.main(["--ckpt-path", str(helm_run), "--full-view", "--out", str(tmp_path / "f")]) == 2
    assert "--full-view draws MiniGrid's whole grid" in capsys.readouterr().err


@pytest.fixture(scope="module")
def page(helm_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "eval"
    assert evaluate.main(["--ckpt-path", str(helm_run), "--n-episodes", "2", "--html", "--no-progress",
                          "--out", str(out)]) == 0
    return out / "episodes.html"


def test_the_page_is_self_contained(page):
    text = page.read_text()
    assert "data:image/png;base64," in text and "http://" not in text and "https://" not in text
    assert text.count('"steps"') == 2 and '"words"' in text  # the memory's words of every step


def test_the_page_slider_walks_through_the_steps_in_chromium(page, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(page.as_uri())
        sections = driver.find_elements(By.CSS_SELECTOR, "section.episode")
        assert len(sections) == 2
        first = sections[0]
        position = first.find_element(By.CLASS_NAME, "position")
        assert position.text == "step 0 of 2"
        seen = [(first.find_element(By.CLASS_NAME, "view").get_attribute("src"),
                 first.find_element(By.CLASS_NAME, "words").text)]
        slider = first.find_element(By.CLASS_NAME, "slider")
        for step in (1, 2):
            slider.send_keys(Keys.ARROW_RIGHT)
            assert position.text == f"step {step} of 2"
            seen.append((first.find_element(By.CLASS_NAME, "view").get_attribute("src"),
                         first.find_element(By.CLASS_NAME, "words").text))
        assert len({src for src, _ in seen}) == 3  # cue, wait, query: three different frames
        assert all(words and words != "-" for _, words in seen)
        assert driver.save_screenshot(str(tmp_path / "page.png")) and (tmp_path / "page.png").stat().st_size > 1000
    finally:
        driver.quit()
