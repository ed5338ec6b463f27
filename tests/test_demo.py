"""
The web demo served for real on 127.0.0.1: called through its API with `gradio_client`, and driven in headless
Chromium like a visitor would (uploads, generate, the video element's MP4 decoded back). Needs the `[demo]` extra;
the browser test needs Debian's `chromium` and `chromium-driver` (installed by .ci/run).

Screenshots of the browser test go to $DAWN_TEST_ARTIFACTS (default: the test's tmp_path); the path is printed.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import soundfile


gradio = pytest.importorskip("gradio", reason='the web demo needs the [demo] extra: pip install -e ".[demo]"')

from gradio_client import Client, handle_file  # noqa: E402

from diffusers_dawn.cli import DEMO_AUDIO, DEMO_IMAGE, RANDOM_DEMO_MODEL  # noqa: E402
from diffusers_dawn.demo.app import build_demo, launch_demo  # noqa: E402
from diffusers_dawn.demo.handlers import MAX_SPEECH_SECONDS, DemoSession  # noqa: E402
from diffusers_dawn.processing.audio import num_video_frames  # noqa: E402
from diffusers_dawn.processing.video import probe_video, read_video  # noqa: E402

from _training_utils import REPO_ROOT  # noqa: E402


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Headless on a machine without network: no GPU, no sandbox (CI runs as root), and none of the browser's own
# background connections, which a closed network refuses.
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1000",
)  # fmt: skip
STEPS = 2
GENERATION_TIMEOUT = 600  # seconds; a 2-step tiny-random generation takes ~10 s on a quiet 2-core CPU


def expected_frames(path) -> int:
    info = soundfile.info(path)
    return num_video_frames(info.frames, info.samplerate)


def assert_talking_head_mp4(path, num_frames):
    """The file decodes with PyAV: `num_frames` frames at 25 fps and an AAC speech track as long as the video."""
    frames, fps, audio, audio_rate = read_video(path)
    info = probe_video(path)
    assert frames.shape[0] == info["num_frames"] == num_frames
    assert fps == info["fps"] == 25
    assert info["video_codec"] == "h264" and info["audio_codec"] == "aac"
    assert info["audio_duration"] == pytest.approx(num_frames / 25, abs=0.03)
    assert audio is not None and np.abs(audio).max() > 0.05  # the speech, not silence


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The demo with the tiny random-weight model, listening on a free port of 127.0.0.1."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    session = DemoSession([RANDOM_DEMO_MODEL], device="cpu", output_dir=str(tmp_path_factory.mktemp("videos")))
    demo = build_demo(session)
    launch_demo(demo, host="127.0.0.1", port=port, prevent_thread_lock=True)
    yield demo.local_url
    demo.close()


@pytest.fixture(scope="module")
def no_face_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("inputs") / "wall.png"
    PIL.Image.new("RGB", (320, 240), (128, 140, 150)).save(path)
    return path


def test_api_generates_the_video_and_refuses_bad_input_with_a_message(server, no_face_image, tmp_path):
    client = Client(server, verbose=False, download_files=str(tmp_path))
    crop, status = client.predict(handle_file(DEMO_IMAGE), api_name="/face_crop")
    assert PIL.Image.open(crop).size == (128, 128) and status.startswith("Face found")
    crop, status = client.predict(handle_file(str(no_face_image)), api_name="/face_crop")
    assert crop is None and status.startswith("**No face found in the portrait")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not a photo")
    with pytest.raises(Exception, match=r"Portrait: \.txt files are not accepted; upload \.jpg"):
        client.predict(handle_file(str(not_an_image)), api_name="/face_crop")

    job = client.submit(
        portrait=handle_file(DEMO_IMAGE), speech=handle_file(DEMO_AUDIO), steps=STEPS, seed=1, api_name="/generate"
    )
    video, seconds, summary = job.result(timeout=GENERATION_TIMEOUT)
    frames = expected_frames(DEMO_AUDIO)
    assert_talking_head_mp4(video, frames)
    assert seconds > 0 and summary.startswith(f"Generated in {seconds:.1f} s with {STEPS} steps: {frames} frames")
    # The progress the page shows: one update per denoising step, in order.
    updates = []
    while not job.communicator.updates.empty():
        updates.append(job.communicator.updates.get_nowait())
    descriptions = [unit.desc for update in updates for unit in (getattr(update, "progress_data", None) or [])]
    denoising = [description for description in descriptions if description.startswith("Denoising")]
    assert list(dict.fromkeys(denoising)) == [f"Denoising step {step}/{STEPS}" for step in range(1, STEPS + 1)]

    long_speech = tmp_path / "long.wav"
    soundfile.write(long_speech, np.zeros(int((MAX_SPEECH_SECONDS + 2) * 8000), np.float32), 8000)
    with pytest.raises(Exception, match=r"Speech: the clip lasts 32\.0 s, longer than the demo's 30 s") as error:
        client.predict(handle_file(DEMO_IMAGE), handle_file(str(long_speech)), api_name="/generate")
    assert "Traceback" not in str(error.value)


@pytest.mark.slow
def test_browser_page_generates_a_video_with_sound_and_explains_a_missing_face(server, no_face_image, tmp_path):
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        pytest.skip(f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    artifacts = Path(os.environ.get("DAWN_TEST_ARTIFACTS", tmp_path / "screenshots"))
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"browser screenshots: {artifacts}")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)

    def wait_for(condition, timeout=120):
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(lambda _: condition())

    def find(selector):
        return driver.find_elements(By.CSS_SELECTOR, selector)

    def upload(component, path):
        wait_for(lambda: find(f"#{component} input[type=file]"))[0].send_keys(str(path))

    try:
        # A photo without a face: the page says so next to the preview.
        driver.get(server)
        upload("portrait", no_face_image)
        status = wait_for(lambda: "No face found" in find("#face-status")[0].text and find("#face-status")[0])
        assert "No face found in the portrait: upload a photo with a clearly visible" in status.text
        assert "Traceback" not in driver.page_source
        driver.save_screenshot(str(artifacts / "no-face.png"))

        # The bundled portrait and speech, 2 steps, generate.
        driver.get(server)
        upload("portrait", DEMO_IMAGE)
        upload("speech", DEMO_AUDIO)
        wait_for(lambda: find("#face-crop img") and find("#speech audio"))
        assert find("#face-status")[0].text.startswith("Face found")
        driver.find_element(By.XPATH, "//button[contains(., 'Settings')]").click()
        steps = wait_for(lambda: find("#steps input[type=number]"))[0]
        steps.send_keys(Keys.CONTROL, "a")
        steps.send_keys(str(STEPS), Keys.TAB)
        wait_for(lambda: find("#steps input[type=range]")[0].get_attribute("value") == str(STEPS), timeout=10)
        driver.find_element(By.CSS_SELECTOR, "#generate").click()
        progress_seen = False
        # The progress bar's text, e.g. "Denoising step 1/2" (not the "Denoising steps" slider's label).
        progress_text = f"//*[contains(text(), 'Denoising step ') and contains(text(), '/{STEPS}')]"
        deadline = time.monotonic() + GENERATION_TIMEOUT
        while not find("#result video[src]") and time.monotonic() < deadline:
            if not progress_seen and driver.find_elements(By.XPATH, progress_text):
                progress_seen = True
                driver.execute_script("window.scrollTo(0, 0)")
                driver.save_screenshot(str(artifacts / "progress.png"))
            time.sleep(0.2)
        source = wait_for(lambda: find("#result video[src]"), timeout=5)[0].get_attribute("src")
        summary = wait_for(lambda: find("#summary")[0].text.startswith("Generated in") and find("#summary")[0])
        frames = expected_frames(DEMO_AUDIO)
        assert f"with {STEPS} steps: {frames} frames at 25 fps" in summary.text
        print(f"progress bar seen while generating: {progress_seen}")

        downloaded = tmp_path / "from-the-page.mp4"
        with urllib.request.urlopen(source, timeout=60) as response, open(downloaded, "wb") as file:
            shutil.copyfileobj(response, file)
        assert_talking_head_mp4(downloaded, frames)

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, height)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(artifacts / "result.png"))
    finally:
        driver.quit()


def test_space_entry_serves_the_same_page_and_endpoints():
    # The Space's entry point, imported as a Space imports it (by name, from the repository root) in a fresh
    # interpreter but not run: it builds the page without serving it.
    code = (
        "import gradio, app; print(isinstance(app.demo, gradio.Blocks)); "
        "print(sorted(fn.api_name for fn in app.demo.fns.values() if fn.api_visibility == 'public'))"
    )
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert completed.stdout.split("\n")[-3:-1] == ["True", "['face_crop', 'generate']"]
