"""The `diffusers-dito app` web app: model folders, reconstructions and errors, then the page itself, served on a
free loopback port and driven in headless Chromium (Debian's `chromium` and `chromium-driver`; `.ci/run` installs
them). Without a browser or its driver the browser test is skipped, with the reason.

`DITO_APP_TEST_MODEL=FOLDER` runs the browser test on a trained model instead of the tiny random one, and
`DITO_APP_SCREENSHOT=PATH` keeps its screenshot (docs/results/app/screenshot.png is made so; see docs/app.md).
"""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

from diffusers_dito.app import DiToReconstructor, held_out_example, resolve_model_folders, write_examples
from diffusers_dito.cli import main
from diffusers_dito.pipelines.loading import load_reconstruction_pipeline


@pytest.fixture(scope="module")
def demo_folder(cli_folders, tmp_path_factory):
    """A folder laid out as `training/demo.py --distill` writes it: `pipeline/`, and `student/` (1 step)."""
    root = tmp_path_factory.mktemp("app") / "dito-demo"
    shutil.copytree(cli_folders / "dito", root / "pipeline")
    shutil.copytree(cli_folders / "dito", root / "student")
    config_path = root / "student" / "vae" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "num_inference_steps": 1}))
    return root


@pytest.fixture(scope="module")
def reconstructor(demo_folder):
    pipe = load_reconstruction_pipeline(demo_folder / "pipeline")
    return DiToReconstructor(pipe, load_reconstruction_pipeline(demo_folder / "student"))


def noise_image(width: int, height: int, seed: int = 0) -> PIL.Image.Image:
    return PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_resolve_model_folders(demo_folder, cli_folders):
    expected = (demo_folder / "pipeline", demo_folder / "student")
    assert resolve_model_folders(demo_folder) == expected  # training/demo.py's --output_dir
    assert resolve_model_folders(demo_folder / "pipeline") == expected  # the student next to the model is found
    assert resolve_model_folders(cli_folders / "dito") == (cli_folders / "dito", None)  # no student/ next to it
    explicit = resolve_model_folders(cli_folders / "dito", student=demo_folder / "student")
    assert explicit == (cli_folders / "dito", demo_folder / "student")
    with pytest.raises(ValueError, match="--student .* no such folder"):
        resolve_model_folders(cli_folders / "dito", student=cli_folders / "missing")


@pytest.mark.parametrize("model", ["missing", "."])
def test_without_a_model_the_app_says_which_command_makes_one(cli_folders, capsys, model):
    assert main(["app", "--model", str(cli_folders / model)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "python training/demo.py --output_dir" in lines[0], lines


def test_without_gradio_the_app_says_how_to_install_it(cli_folders, capsys, monkeypatch):
    find_spec = importlib.util.find_spec

    def no_gradio(name, *args):
        return None if name == "gradio" else find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", no_gradio)
    assert main(["app", "--model", str(cli_folders / "dito")]) == 2
    assert (
        capsys.readouterr().err.strip()
        == 'diffusers-dito app: error: the web app needs Gradio: pip install -e ".[app]"'
    )


def test_reconstruct_keeps_the_size_and_measures(reconstructor):
    image = noise_image(53, 37)  # not a multiple of the model's factor 8: padded, then cropped back
    model, student = reconstructor.reconstruct(image, steps=2, sampler="Euler", seed=0)
    assert (model.label, student.label) == ("DiTo, 2 Euler steps", "distilled student, 1 step")
    for result in (model, student):
        assert result.image.size == result.difference.size == (53, 37)
        assert np.isfinite(result.psnr) and -1 <= result.ssim <= 1
        assert result.encode_seconds > 0 and result.decode_seconds > 0
    error = np.abs(np.asarray(model.image, dtype=int) - np.asarray(image, dtype=int))
    np.testing.assert_array_equal(np.asarray(model.difference), np.minimum(error * 4, 255))
    again = reconstructor.reconstruct(image, steps=2, sampler="Euler", seed=0)[0]
    np.testing.assert_array_equal(np.asarray(again.image), np.asarray(model.image))
    for changed in ({"steps": 3}, {"sampler": "Heun"}, {"seed": 1}):
        other = reconstructor.reconstruct(image, **{"steps": 2, "sampler": "Euler", "seed": 0, **changed})[0]
        assert not np.array_equal(np.asarray(other.image), np.asarray(model.image)), changed


def test_tiny_images_and_tiling(reconstructor):
    tiny = reconstructor.reconstruct(noise_image(9, 7), steps=1)[0]  # under SSIM's 11-px window
    assert tiny.image.size == (9, 7) and tiny.ssim is None
    vae = reconstructor.pipe.vae
    vae.tile_sample_size, vae.tile_overlap = 32, 16
    try:
        image = noise_image(53, 37)
        assert reconstructor.tile_size(image, tiling=True) == 32 and reconstructor.tile_size(image, False) is None
        assert reconstructor.reconstruct(image, steps=1, tiling=True)[0].image.size == (53, 37)
    finally:
        vae.tile_sample_size, vae.tile_overlap = 256, 64
        vae.disable_tiling()


def test_bad_inputs_give_one_clear_message(reconstructor, cli_folders, tmp_path):
    with pytest.raises(ValueError, match=r"^broken\.png: not a readable image"):
        reconstructor.read(cli_folders / "broken.png")
    with pytest.raises(ValueError, match="is a directory"):
        reconstructor.read(tmp_path)
    noise_image(1200, 1000).save(tmp_path / "large.png")
    with pytest.raises(ValueError, match=r"1200×1000 px \(1\.2 MP\).* up to 1 MP.*--max-megapixels 2"):
        reconstructor.read(tmp_path / "large.png")
    with pytest.raises(ValueError, match="Steps must be in"):
        reconstructor.reconstruct(noise_image(16, 16), steps=51)
    with pytest.raises(ValueError, match="sampler must be one of"):
        reconstructor.reconstruct(noise_image(16, 16), sampler="DDIM")
    for seed in (None, float("inf"), -1, 2**64):  # what an emptied or mistyped number box can send
        with pytest.raises(ValueError, match="seed must be an integer"):
            reconstructor.reconstruct(noise_image(16, 16), seed=seed)
    assert reconstructor.read(cli_folders / "gray.jpg").mode == "RGB"


def test_examples_are_held_out_photos(tmp_path):
    paths = write_examples(tmp_path)
    assert [Path(p).name for p in paths][0] == "chelsea-held-out-0.png"
    assert PIL.Image.open(paths[0]).size == held_out_example("chelsea", 0).size == (113, 75)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launch_reaches_no_network(reconstructor, monkeypatch):
    pytest.importorskip("gradio", reason="the [app] extra is not installed")
    from diffusers_dito.app import launch

    outside = []
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo
    loopback = ("127.0.0.1", "::1", "localhost")

    def loopback_connect(sock, address):
        if isinstance(address, tuple) and address[0] not in loopback:
            outside.append(address)
            raise OSError("the test allows loopback connections only")
        return connect(sock, address)

    def loopback_getaddrinfo(host, *args, **kwargs):  # a name lookup is the first sign of a request
        if host not in loopback:
            outside.append(host)
            raise OSError("the test allows loopback names only")
        return getaddrinfo(host, *args, **kwargs)

    monkeypatch.delenv("GRADIO_ANALYTICS_ENABLED", raising=False)  # the app must be offline by default
    monkeypatch.setattr(socket.socket, "connect", loopback_connect)
    monkeypatch.setattr(socket, "getaddrinfo", loopback_getaddrinfo)
    port = free_port()
    demo = launch(reconstructor.pipe, port=port, prevent_thread_lock=True)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = json.loads(response.read())
        assert config["analytics_enabled"] is False and "DiTo" in json.dumps(config)
        time.sleep(1)  # a telemetry or version-check thread would start at launch
    finally:
        demo.close()
    assert outside == []


# ---------------------------------------------------------------------------------------------------- the browser
def find_browser() -> tuple[str, str]:
    """Chromium and its driver, or skip with the reason."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        pytest.skip(f"{missing} not found (apt-get install chromium chromium-driver; .ci/run does)")
    return browser, driver


def start_app(model: Path, port: int) -> subprocess.Popen:
    """`diffusers-dito app` in a subprocess, returned once it answers on 127.0.0.1:`port`."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "diffusers_dito.cli", "app", "--model", str(model), "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the app exited with code {process.returncode}:\n{process.stdout.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=5).close()
            return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail("the app did not answer within 180 s")


def open_browser(browser: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # the page may reach the app, nothing else
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver), options=options)


def loaded_image(page, key: str, previous: str | None = None) -> tuple[str, tuple[int, int]] | None:
    """The src and natural size of panel `key`'s image, once it is loaded (and differs from `previous`)."""
    found = page.execute_script(
        "const img = document.querySelector(arguments[0]);"
        "return img && img.complete && img.naturalWidth > 0 ? [img.src, img.naturalWidth, img.naturalHeight] : null;",
        f"#dito-{key} img",
    )
    if found is None or found[0] == previous:
        return None
    return found[0], (found[1], found[2])


def fetch_image(src: str) -> np.ndarray:
    with urllib.request.urlopen(src, timeout=30) as response:
        return np.asarray(PIL.Image.open(BytesIO(response.read())).convert("RGB"))


def drag_slider(page, target: int) -> tuple[int, int]:
    """Drag the steps slider's thumb to about `target` with the mouse, as a user would; returns (old, new) value."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    slider = page.find_element(By.CSS_SELECTOR, "#dito-steps input[type=range]")
    low, high, value = (int(slider.get_attribute(name)) for name in ("min", "max", "value"))
    width = slider.size["width"]
    start, end = ((v - low) / (high - low) * width - width / 2 for v in (value, target))  # offsets from the centre
    ActionChains(page).move_to_element_with_offset(slider, round(start), 0).click_and_hold().move_by_offset(
        round(end - start), 0
    ).release().perform()
    return value, int(slider.get_attribute("value"))


def metrics_text(page) -> str | None:
    """The metrics panel's text once it shows metrics."""
    from selenium.webdriver.common.by import By

    text = page.find_element(By.ID, "dito-metrics").text
    return text if "PSNR" in text else None


@pytest.mark.slow
def test_app_in_a_browser(demo_folder, tmp_path):
    browser, driver = find_browser()
    pytest.importorskip("gradio", reason="the [app] extra is not installed")
    pytest.importorskip("selenium", reason="selenium is not installed (the [test] extra)")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model = Path(os.environ.get("DITO_APP_TEST_MODEL", demo_folder))
    has_student = resolve_model_folders(model)[1] is not None
    photo = tmp_path / "cat-eye.png"
    held_out_example("chelsea", 0).save(photo)  # 113×75: neither side a multiple of the factor
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    port = free_port()
    process = start_app(model, port)
    page = None
    try:
        page = open_browser(browser, driver)
        page.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(page, 300)
        upload = "#dito-upload input[type=file]"
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, upload))
        page.find_element(By.CSS_SELECTOR, upload).send_keys(str(tmp_path / "broken.png"))
        wait.until(lambda p: "broken.png: not a readable image" in p.find_element(By.ID, "dito-metrics").text)
        page.find_element(By.CSS_SELECTOR, "#dito-upload button[aria-label=Clear]").click()  # the app still runs
        wait.until(lambda p: p.find_elements(By.CSS_SELECTOR, upload))
        page.find_element(By.CSS_SELECTOR, upload).send_keys(str(photo))
        src, size = wait.until(lambda p: loaded_image(p, "reconstruction"))
        assert size == (113, 75)
        panels = ("original", "difference", "student") if has_student else ("original", "difference")
        for key in panels:
            assert wait.until(lambda p, key=key: loaded_image(p, key))[1] == (113, 75), key
        metrics = wait.until(metrics_text)
        assert all(word in metrics for word in ("PSNR", "SSIM", " dB", "decode", "Euler steps")), metrics
        assert ("distilled student, 1 step" in metrics) == has_student, metrics
        first = fetch_image(src)

        old, steps = drag_slider(page, target=12)
        assert steps != old and f"DiTo, {old} Euler steps" in metrics
        new_src, new_size = wait.until(lambda p: loaded_image(p, "reconstruction", previous=src))
        wait.until(lambda p: f"DiTo, {steps} Euler steps" in (metrics_text(p) or ""))
        assert new_size == (113, 75) and not np.array_equal(fetch_image(new_src), first)
        screenshot = Path(os.environ.get("DITO_APP_SCREENSHOT", tmp_path / "app.png"))
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        assert page.save_screenshot(str(screenshot)) and PIL.Image.open(screenshot).size[0] > 0
    finally:
        if page is not None:
            page.quit()
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
