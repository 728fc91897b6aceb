"""The `diffusers-dito app` web app: model folders, reconstructions and errors, then the page itself, served on a
free loopback port and driven in headless Chromium (Debian's `chromium` and `chromium-driver`; `.ci/run` installs
them). Without a browser or its driver the browser test is skipped, with the reason.

`DITO_APP_TEST_MODEL=FOLDER` runs the browser test on a trained model instead of the tiny random one, and
`DITO_APP_SCREENSHOT=PATH` keeps its screenshot (docs/results/app/screenshot.png is made so; see docs/app.md).
"""

import concurrent.futures
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import PIL.Image
import pytest
from diffusers.hooks import HookRegistry, ModelHook

from diffusers_dito.app import (
    DiToReconstructor,
    ReconstructionStopped,
    held_out_example,
    resolve_model_folders,
    write_examples,
)
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
    with pytest.raises(ValueError, match="Steps must be a whole number in"):
        reconstructor.reconstruct(noise_image(16, 16), steps=51)
    with pytest.raises(ValueError, match="sampler must be one of"):
        reconstructor.reconstruct(noise_image(16, 16), sampler="DDIM")
    for seed in (None, float("inf"), -1, 2**64):  # what an emptied or mistyped number box can send
        with pytest.raises(ValueError, match="seed must be an integer"):
            reconstructor.reconstruct(noise_image(16, 16), seed=seed)
    assert reconstructor.read(cli_folders / "gray.jpg").mode == "RGB"


def test_the_pixel_limit_counts_the_pixels_once_padded(reconstructor, tmp_path):
    PIL.Image.new("RGB", (1_000_000, 1)).save(tmp_path / "strip.png")  # a 4 KB file, 1 MP; 8 MP once padded
    with pytest.raises(ValueError, match=r"1000000×1 px, 1000000×8 once padded to a multiple of 8 \(8\.0 MP\)"):
        reconstructor.read(tmp_path / "strip.png")
    with pytest.raises(ValueError, match=r"1001×1000 px, 1008×1000 once padded .* \(1\.01 MP\); .* up to 1 MP"):
        reconstructor.check_size(1001, 1000)  # not "(1.0 MP) ... up to 1 MP"


def test_a_tiled_decode_is_bounded_in_tiles(reconstructor):
    strip = PIL.Image.new("RGB", (125_000, 8))  # 1 MP, within the pixel limit; 651 tiles of 256² px a step
    with pytest.raises(ValueError, match=r"takes 651 tiles a step; this app allows 64\. .*untick \*Tile large images"):
        reconstructor.reconstruct(strip, steps=1, tiling=True)
    assert reconstructor.tiles_per_step(1000, 1000) == 25  # a 1 MP square is well within


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"steps": 2.7}, "Steps must be a whole number in \\[1, 50\\], got 2.7"),
        ({"steps": True}, "Steps must be a whole number"),
        ({"tiling": "no"}, "Tiling must be true or false, got 'no'"),
        ({"seed": 2.5}, "seed must be an integer"),
    ],
)
def test_api_values_are_checked_not_coerced(reconstructor, setting, message):
    with pytest.raises(ValueError, match=message):
        reconstructor.reconstruct(noise_image(16, 16), **setting)
    assert reconstructor.reconstruct(noise_image(16, 16), steps=2.0, seed=3.0)[0].label == "DiTo, 2 Euler steps"


class SlowForward(ModelHook):
    """`seconds` of sleep before every forward of the module it is registered on; counts the forwards."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        time.sleep(self.seconds)
        return args, kwargs


def test_a_request_stops_at_its_time_limit(cli_folders):
    pipe = load_reconstruction_pipeline(cli_folders / "dito")
    slow = SlowForward(0.05)
    HookRegistry.check_if_exists_or_initialize(pipe.vae.decoder_unet).register_hook(slow, "slow")
    reconstructor = DiToReconstructor(pipe, time_limit=0.5)
    start = time.monotonic()
    with pytest.raises(ReconstructionStopped, match="took longer than the 0.5 s this app gives a request"):
        reconstructor.reconstruct(noise_image(16, 16), steps=50, sampler="Heun")  # 99 evaluations, 5 s or more
    assert time.monotonic() - start < 3 and slow.calls < 30
    assert reconstructor.reconstruct(noise_image(16, 16), steps=1)[0].image.size == (16, 16)  # the next one runs


def test_examples_are_held_out_photos(tmp_path):
    paths = write_examples(tmp_path)
    assert [Path(p).name for p in paths][0] == "chelsea-held-out-0.png"
    assert PIL.Image.open(paths[0]).size == held_out_example("chelsea", 0).size == (113, 75)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_launch_reaches_no_network_and_suggests_no_share_link(reconstructor, monkeypatch, capfd):
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
    printed = capfd.readouterr()
    assert "share=True" not in printed.out + printed.err  # Gradio's suggestion of a public link
    assert f"serving on http://127.0.0.1:{port}" in printed.out


def test_serving_beyond_loopback_warns_that_anyone_can_use_it(reconstructor, monkeypatch, capsys):
    import gradio as gr

    from diffusers_dito.app import launch

    launched = {}

    def fake_launch(blocks, **kwargs):  # nothing is bound: the test serves no other address than loopback
        launched.update(kwargs)
        blocks.server_port = kwargs["server_port"]

    monkeypatch.setattr(gr.Blocks, "launch", fake_launch)
    launch(reconstructor.pipe, host="0.0.0.0", port=7860, prevent_thread_lock=True)
    assert launched["server_name"] == "0.0.0.0" and launched["share"] is False
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0, so anyone who can reach this machine can upload images" in err, err
    assert "without a login" in err and "ssh -L" in err


def test_a_busy_port_is_named_before_the_model_is_loaded(cli_folders, capsys, monkeypatch):
    from diffusers_dito import cli

    monkeypatch.setattr(cli, "_load_pipeline", lambda *args: pytest.fail("the model was loaded first"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["app", "--model", str(cli_folders / "dito"), "--port", str(port)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--port {port}: cannot listen on 127.0.0.1:{port}" in lines[0], lines
    assert "GRADIO_SERVER_PORT" not in lines[0]


# ---------------------------------------------------------------------------------------------------- served
def peak_memory_mib(pid: int | str = "self") -> float:
    """The peak resident memory (VmHWM) of a process, in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024


@pytest.fixture(scope="module")
def served(demo_folder):
    """The app with the model and its student, served in this process on a free loopback port."""
    pytest.importorskip("gradio", reason="the [app] extra is not installed")
    from diffusers_dito.app import launch

    pipe = load_reconstruction_pipeline(demo_folder / "pipeline")
    port = free_port()
    demo = launch(pipe, load_reconstruction_pipeline(demo_folder / "student"), port=port, prevent_thread_lock=True)
    yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", pipe=pipe)
    demo.close()


LOAD_REQUESTS = [  # (width, height, steps, sampler, seed): small; six different ones, each sent twice
    (24 + 3 * i, 16 + 2 * i, 1 + i % 3, ("Euler", "Heun")[i % 2], i) for i in list(range(6)) * 2
]


def reconstruction_pixels(result) -> list[np.ndarray]:
    """The model's and the student's reconstructions of one response, as arrays."""
    return [np.asarray(PIL.Image.open(result[k])) for k in (1, 3)]


def test_concurrent_requests_are_all_answered_as_they_are_one_by_one(served, tmp_path):
    from gradio_client import Client, handle_file

    files = []
    for i, (width, height, _, _, seed) in enumerate(LOAD_REQUESTS):
        files.append(tmp_path / f"{i}.png")
        noise_image(width, height, seed=seed).save(files[-1])

    def request(client, i):
        _, _, steps, sampler, seed = LOAD_REQUESTS[i]
        return client.predict(handle_file(files[i]), steps, sampler, seed, False, api_name="/reconstruct")

    one_client = Client(served.url, verbose=False)
    sequential = [reconstruction_pixels(request(one_client, i)) for i in range(len(LOAD_REQUESTS))]
    clients = [Client(served.url, verbose=False) for _ in LOAD_REQUESTS]  # one per user
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        responses = list(pool.map(request, clients, range(len(clients))))
    seconds = time.monotonic() - start
    for i, response in enumerate(responses):
        assert "PSNR" in response[5], response[5]
        for concurrent_image, sequential_image in zip(reconstruction_pixels(response), sequential[i]):
            np.testing.assert_array_equal(concurrent_image, sequential_image)
    peak = peak_memory_mib()
    print(
        f"\napp load test: {len(clients)} concurrent requests answered in {seconds:.1f} s; peak memory {peak:.0f} MiB"
    )
    assert seconds <= 30


def test_a_request_whose_client_has_gone_stops_and_the_next_is_answered(served, tmp_path):
    from gradio_client import Client, handle_file

    noise_image(1000, 1000).save(tmp_path / "large.png")  # 99 evaluations at 1 MP: minutes of work on a CPU
    counter = SlowForward(0.0)
    registry = HookRegistry.check_if_exists_or_initialize(served.pipe.vae.decoder_unet)
    registry.register_hook(counter, "count")
    client_code = (
        "import sys; from gradio_client import Client, handle_file; "
        "Client(sys.argv[1], verbose=False).predict(handle_file(sys.argv[2]), 50, 'Heun', 0, False, api_name='/run')"
    )
    leaving = subprocess.Popen([sys.executable, "-c", client_code, served.url, str(tmp_path / "large.png")])
    try:
        deadline = time.monotonic() + 120
        while counter.calls < 2 and time.monotonic() < deadline:  # the large request is being worked on
            time.sleep(0.2)
        assert counter.calls >= 2
    finally:
        leaving.kill()  # the client goes away without a word
        leaving.wait()
    noise_image(24, 16).save(tmp_path / "small.png")
    job = Client(served.url, verbose=False).submit(
        handle_file(tmp_path / "small.png"), 1, "Euler", 0, False, api_name="/run"
    )
    try:
        assert "PSNR" in job.result(timeout=30)[5]  # not minutes later, once the abandoned request is done
        calls = counter.calls
        time.sleep(3)
        assert counter.calls == calls  # nothing runs any more
    finally:
        registry.remove_hook("count")


def test_uploads_and_outputs_are_deleted_after_their_age(reconstructor, tmp_path, monkeypatch):
    pytest.importorskip("gradio", reason="the [app] extra is not installed")
    from gradio_client import Client, handle_file

    from diffusers_dito.app import launch

    cache = tmp_path / "gradio"
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(cache))  # this server's uploads and outputs, alone
    port = free_port()
    demo = launch(reconstructor.pipe, port=port, delete_cache=(1, 2), prevent_thread_lock=True)
    try:
        noise_image(300, 200).save(tmp_path / "photo.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        result = client.predict(handle_file(tmp_path / "photo.png"), 20, "Heun", 0, False, api_name="/reconstruct")
        assert "PSNR" in result[5]
        assert any(path.is_file() for path in cache.rglob("*"))  # the upload and the outputs, for now
        deadline = time.monotonic() + 20
        while any(path.is_file() for path in cache.rglob("*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert [str(path) for path in cache.rglob("*") if path.is_file()] == []
    finally:
        demo.close()


def test_stopping_the_app_deletes_its_files_and_its_examples(demo_folder, tmp_path):
    from gradio_client import Client, handle_file

    env = {"TMPDIR": str(tmp_path / "tmp"), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    (tmp_path / "tmp").mkdir()
    port = free_port()
    process = start_app(demo_folder, port, **env)
    try:
        noise_image(300, 200).save(tmp_path / "photo.png")
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        assert "PSNR" in client.predict(handle_file(tmp_path / "photo.png"), 8, "Euler", 0, False, api_name="/run")[5]
        assert any(path.is_file() for path in (tmp_path / "gradio").rglob("*"))
        assert list((tmp_path / "tmp").glob("dito-app-examples-*"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    assert [str(path) for path in (tmp_path / "gradio").rglob("*") if path.is_file()] == []
    assert list((tmp_path / "tmp").glob("dito-app-examples-*")) == []


# ---------------------------------------------------------------------------------------------------- the browser
def find_browser() -> tuple[str, str]:
    """Chromium and its driver, or skip with the reason."""
    browser = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(name for name, path in (("chromium", browser), ("chromedriver", driver)) if not path)
        pytest.skip(f"{missing} not found (apt-get install chromium chromium-driver; .ci/run does)")
    return browser, driver


def start_app(model: Path, port: int, **env: str) -> subprocess.Popen:
    """`diffusers-dito app` in a subprocess (with `env` added to its environment), returned once it answers on
    127.0.0.1:`port`."""
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", **env}
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
