# Copyright 2026 The diffusers-dito authors. Licensed under the Apache License, Version 2.0.
"""The `diffusers-dito app` web app: upload an image, see original | reconstruction | difference side by side.

The app is a Gradio `Blocks` page around a [`DiToReconstructor`], which holds the loaded pipelines and does the
work: it reads the upload (a bad file gives a clear message, never a crash), refuses images above a size limit,
encodes and decodes with the chosen sampler, step count, seed and tiling, and measures PSNR, SSIM and the
encode/decode times. Where a distilled student is loaded (`--student FOLDER`, or a `student/` folder next to the
model's folder, as `training/demo.py --distill` writes it), the student's reconstruction is shown below the
model's, with its own metrics.

Gradio is an optional dependency (`pip install -e ".[app]"`): it is imported by [`build_app`] and [`launch`] only,
so [`DiToReconstructor`] and [`resolve_model_folders`] work without it. The page reaches no network: analytics and
Gradio's version check are off, `share` is never used, and its fonts are served by the app itself.

Examples:
    diffusers-dito app --model dito-demo                # the folder `python training/demo.py` writes
    diffusers-dito app --model my-dito --student my-dito-student --port 7861
"""

import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler

from .image_utils import read_image
from .limits import APP_MAX_MEGAPIXELS, MAX_SEED
from .metrics import psnr, ssim
from .pipelines.loading import model_kind
from .pipelines.pipeline_dito import DiToPipeline

if TYPE_CHECKING:  # Gradio is the [app] extra: imported where the page is built
    import gradio as gr

SAMPLERS = {"Euler": FlowMatchEulerDiscreteScheduler, "Heun": FlowMatchHeunDiscreteScheduler}
MAX_APP_STEPS = 50  # the slider's range: as far as the decoding-steps sweep goes (experiments/decode_steps)
MAX_UPLOAD_SIZE = "64mb"  # Gradio refuses larger files at upload, before they are read
DIFFERENCE_GAIN = 4  # |reconstruction - original| × 4, as in the demo's reconstruction grids
SSIM_MIN_SIDE = 11  # SSIM's Gaussian window
# (photo, held-out cell): a cat's eye, a rocket, a pagoda, a face; from 113×75 to 160×107 px
EXAMPLE_CELLS = (("chelsea", 0), ("astronaut", 0), ("china", 0), ("grace_hopper", 1))
PANEL_HEIGHT = 224  # px: small images are enlarged to it
IMAGE_PANELS = (  # (elem_id suffix, label): the model's row, then the student's
    ("original", "original"),
    ("reconstruction", "reconstruction"),
    ("difference", f"difference ×{DIFFERENCE_GAIN}"),
    ("student", "distilled student"),
    ("student-difference", f"student difference ×{DIFFERENCE_GAIN}"),
)
DEMO_COMMAND = "python training/demo.py --output_dir {folder}"


@dataclass
class Reconstruction:
    r"""
    One reconstruction and its measurements.

    Args:
        label (`str`): What made it, e.g. `"DiTo, 25 Euler steps"`.
        image (`PIL.Image.Image`): The reconstruction, the size of the input.
        difference (`PIL.Image.Image`): `|image - original| × DIFFERENCE_GAIN`, per channel.
        psnr (`float`): PSNR in dB against the input, as 8-bit images.
        ssim (`float` or `None`): SSIM against the input; `None` for images under 11 px a side.
        encode_seconds (`float`), decode_seconds (`float`): Wall-clock times of the two halves.
    """

    label: str
    image: PIL.Image.Image
    difference: PIL.Image.Image
    psnr: float
    ssim: float | None
    encode_seconds: float
    decode_seconds: float


def _steps(n: int, sampler: str = "") -> str:
    """`"1 step"`, `"25 steps"`, `"25 Euler steps"`."""
    return " ".join(filter(None, (str(n), sampler, "step" if n == 1 else "steps")))


def _model_missing(folder: Path) -> str:
    demo_folder = folder.parent if folder.name == "pipeline" else folder
    command = DEMO_COMMAND.format(folder=demo_folder)
    return (
        f"--model {folder}: no such folder. Make a model with `{command}` (about 8 min on 2 CPU cores; add "
        f"--distill for a 1-step student), then run `diffusers-dito app --model {demo_folder}`"
    )


def resolve_model_folders(
    model: str | os.PathLike, student: str | os.PathLike | None = None
) -> tuple[Path, Path | None]:
    r"""
    The model folder and the student folder (or `None`) the app loads.

    `model` may be a saved DiTo folder or the output folder of `training/demo.py`, whose `pipeline/` is then the
    model. Without `student`, a `student/` folder next to the model's folder (where `training/demo.py --distill`
    writes the 1-step student) is used when it holds a DiTo model.

    Raises:
        `ValueError`: A folder is missing or holds no DiTo model; for a missing model, the message gives the command
            that trains one.

    Examples:
        ```py
        >>> from diffusers_dito.app import resolve_model_folders

        >>> try:
        ...     resolve_model_folders("no-such-folder")
        ... except ValueError as err:
        ...     print("python training/demo.py --output_dir no-such-folder" in str(err))
        True

        ```
    """
    model = Path(model)
    if not model.exists():
        raise ValueError(_model_missing(model))
    if not _holds_dito_model(model) and (model / "pipeline").is_dir():
        model = model / "pipeline"  # the output folder of training/demo.py
    try:
        model_kind(model)
    except ValueError as err:
        command = DEMO_COMMAND.format(folder="dito-demo")
        raise ValueError(f"--model {err}; `{command}` makes one") from None
    if student is not None:
        try:
            model_kind(student)
        except ValueError as err:
            raise ValueError(f"--student {err}") from None
        return model, Path(student)
    sibling = model.parent / "student"  # no student next to the model: the app shows the model alone
    return model, sibling if _holds_dito_model(sibling) and sibling.resolve() != model.resolve() else None


def _holds_dito_model(folder: Path) -> bool:
    try:
        model_kind(folder)
    except ValueError:
        return False
    return True


def _to_tensor(image: PIL.Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (1, 3, H, W) float tensor in [-1, 1], the range the metrics take."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def _difference(image: PIL.Image.Image, original: PIL.Image.Image) -> PIL.Image.Image:
    error = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(original, dtype=np.int16)) * DIFFERENCE_GAIN
    return PIL.Image.fromarray(np.clip(error, 0, 255).astype(np.uint8))


class DiToReconstructor:
    r"""
    What the web app runs: reconstructions of one image by a DiTo pipeline and, where given, its distilled student.

    Calls are serialised by a lock, because the sampler and tiling are set on the shared pipelines for each call.

    Args:
        pipe ([`DiToPipeline`]): The model.
        student ([`DiToPipeline`], *optional*): A distilled student, decoded with its own scheduler and its
            config's `num_inference_steps` (1 for `training/distill_dito.py`'s students).
        max_megapixels (`float`, *optional*, defaults to 1.0): Larger images are refused with a message.

    Examples:
        ```py
        >>> import PIL.Image
        >>> from diffusers import FlowMatchEulerDiscreteScheduler
        >>> from diffusers_dito import DITO_PRESETS, AutoencoderDiTo, DiToPipeline
        >>> from diffusers_dito.app import DiToReconstructor

        >>> vae = AutoencoderDiTo.from_config(DITO_PRESETS["dito-tiny"])
        >>> pipe = DiToPipeline(vae, FlowMatchEulerDiscreteScheduler())
        >>> results = DiToReconstructor(pipe).reconstruct(PIL.Image.new("RGB", (45, 30)), steps=2)
        >>> results[0].label, results[0].image.size
        ('DiTo, 2 Euler steps', (45, 30))

        ```
    """

    def __init__(
        self, pipe: DiToPipeline, student: DiToPipeline | None = None, max_megapixels: float = APP_MAX_MEGAPIXELS
    ):
        self.pipe, self.student, self.max_megapixels = pipe, student, max_megapixels
        self.shift = float(pipe.scheduler.config.get("shift", 1.0))  # the saved shift applies to both samplers
        self.lock = threading.Lock()
        for pipeline in (pipe, student):
            if pipeline is not None:
                pipeline.set_progress_bar_config(disable=True)  # the page shows progress; the console stays quiet

    @property
    def default_steps(self) -> int:
        return min(self.pipe.vae.config.num_inference_steps, MAX_APP_STEPS)

    def tile_size(self, image: PIL.Image.Image, tiling: bool) -> int | None:
        """The side of the tiles `image` is decoded in, or `None` where it is decoded whole."""
        tile = self.pipe.vae.tile_sample_size
        return tile if tiling and max(image.size) > tile else None

    def check_size(self, width: int, height: int) -> None:
        """Raise a `ValueError` that says what to do if a `width`×`height` image is over the size limit."""
        megapixels = width * height / 1e6
        if megapixels > self.max_megapixels:
            raise ValueError(
                f"The image is {width}×{height} px ({megapixels:.1f} MP); this app reconstructs up to "
                f"{self.max_megapixels:g} MP. Downscale or crop it, or restart the app with "
                f"--max-megapixels {np.ceil(megapixels):.0f}."
            )

    def read(self, path: str | os.PathLike) -> PIL.Image.Image:
        """The image file at `path` as RGB, or a one-line `ValueError` naming the file (never a traceback)."""
        path, name = str(path), Path(path).name
        size = None
        try:
            with PIL.Image.open(path) as image:
                size = image.size  # from the header: a huge image is refused before it is decoded
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
            pass  # `read_image` says what is wrong with the file
        if size is not None:
            self.check_size(*size)
        try:
            return read_image(path)
        except ValueError as err:  # the page names the upload, not the temporary file Gradio stored it in
            raise ValueError(str(err).replace(path, name)) from None

    def _run(
        self,
        pipe: DiToPipeline,
        label: str,
        image: PIL.Image.Image,
        steps: int,
        scheduler,
        seed: int,
        on_step: Callable[[int, int], None] | None,
    ) -> Reconstruction:
        pipe.scheduler = scheduler
        total = len(pipe.vae.retrieve_timesteps(steps, scheduler))  # the steps `pipe` will report

        def step_end(pipeline, step: int, timestep: torch.Tensor, callback_kwargs: dict) -> dict:
            on_step(step + 1, total)
            return callback_kwargs

        start = time.perf_counter()
        latents = pipe.encode(image)  # (1, C, ceil(H / f), ceil(W / f))
        encoded = time.perf_counter()
        result = pipe(
            latents=latents,
            height=image.height,
            width=image.width,
            num_inference_steps=steps,
            generator=torch.Generator().manual_seed(seed),
            callback_on_step_end=step_end if on_step is not None else None,
        ).images[0]
        decoded = time.perf_counter()
        original, reconstruction = _to_tensor(image), _to_tensor(result)
        return Reconstruction(
            label=label,
            image=result,
            difference=_difference(result, image),
            psnr=psnr(reconstruction, original),
            ssim=ssim(reconstruction, original) if min(image.size) >= SSIM_MIN_SIDE else None,
            encode_seconds=encoded - start,
            decode_seconds=decoded - encoded,
        )

    def reconstruct(
        self,
        image: PIL.Image.Image,
        steps: int | None = None,
        sampler: str = "Euler",
        seed: int = 0,
        tiling: bool = False,
        on_step: Callable[[int, int], None] | None = None,
    ) -> list[Reconstruction]:
        r"""
        Reconstruct `image` with the model and, where loaded, the student.

        Args:
            image (`PIL.Image.Image`): An RGB image of any size up to the limit.
            steps (`int`, *optional*): The model's ODE steps, 1 to 50; defaults to its config's.
            sampler (`str`, *optional*, defaults to `"Euler"`): `"Euler"` or `"Heun"` (for the model; the student
                keeps its own scheduler).
            seed (`int`, *optional*, defaults to 0): Seed of the decoders' initial noise.
            tiling (`bool`, *optional*, defaults to `False`): Encode and decode in tiles (`vae.enable_tiling()`) when
                the image is larger than a tile, which bounds memory.
            on_step (`Callable[[int, int], None]`, *optional*): Called with (steps done, total) after each step.

        Returns:
            `list[Reconstruction]`: The model's, then the student's.
        """
        steps = self.default_steps if steps is None else int(steps)
        if not 1 <= steps <= MAX_APP_STEPS:
            raise ValueError(f"Steps must be in [1, {MAX_APP_STEPS}], got {steps}.")
        if sampler not in SAMPLERS:
            raise ValueError(f"The sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
        try:
            seed = int(seed)  # the page's number box gives a float, or None when empty
        except (TypeError, ValueError, OverflowError):
            seed = -1
        if not 0 <= seed <= MAX_SEED:
            raise ValueError("The seed must be an integer in [0, 2**64 - 1].")
        self.check_size(*image.size)
        with self.lock:
            results = []
            for pipe in (self.pipe, self.student):
                if pipe is None:
                    continue
                if tiling:
                    pipe.vae.enable_tiling()
                else:
                    pipe.vae.disable_tiling()
                if pipe is self.pipe:
                    n, scheduler = steps, SAMPLERS[sampler](shift=self.shift)
                    label = f"DiTo, {_steps(n, sampler)}"
                else:
                    n, scheduler = pipe.vae.config.num_inference_steps, pipe.scheduler
                    label = f"distilled student, {_steps(n)}"
                results.append(self._run(pipe, label, image, n, scheduler, seed, on_step))
        return results


def format_metrics(image: PIL.Image.Image, results: list[Reconstruction], tile_size: int | None) -> str:
    """The Markdown table under the images: PSNR, SSIM and times, one row per reconstruction."""
    how = f"decoded in tiles of {tile_size}² px" if tile_size else "decoded whole"
    rows = [
        f"**{image.width}×{image.height} px**, {how}; differences ×{DIFFERENCE_GAIN}.",
        "",
        "| | PSNR | SSIM | encode | decode |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        ssim_text = f"{r.ssim:.3f}" if r.ssim is not None else f"n/a (< {SSIM_MIN_SIDE} px)"
        rows.append(
            f"| {r.label} | {r.psnr:.2f} dB | {ssim_text} | {r.encode_seconds:.2f} s | {r.decode_seconds:.2f} s |"
        )
    return "\n".join(rows)


def held_out_example(name: str, cell: int) -> PIL.Image.Image:
    r"""
    Held-out cell `cell` of the bundled photo `name` (`sample_data.held_out_cells`), at the photo's resolution: pixels
    that no training crop of `training/demo.py` touches.

    Examples:
        ```py
        >>> from diffusers_dito.app import held_out_example

        >>> held_out_example("chelsea", 0).size  # the cat's eye
        (113, 75)

        ```
    """
    from .sample_data import held_out_cells, load_photo  # the photos ship with the [demo] extra's packages

    photo = load_photo(name)
    return photo.crop(held_out_cells(name, *photo.size)[cell])


def write_examples(folder: str | os.PathLike | None = None) -> list[str]:
    """
    The app's examples, `EXAMPLE_CELLS`, written as PNGs into `folder` (default: a new temporary folder); none when
    scikit-image, scikit-learn or matplotlib is missing.
    """
    folder = Path(folder or tempfile.mkdtemp(prefix="dito-app-examples-"))
    paths = []
    for name, cell in EXAMPLE_CELLS:
        try:
            image = held_out_example(name, cell)
        except ImportError:
            continue
        paths.append(folder / f"{name}-held-out-{cell}.png")
        image.save(paths[-1])
    return [str(path) for path in paths]


def _describe(name: str, pipe: DiToPipeline) -> str:
    config = pipe.vae.config
    where = f" `{pipe.name_or_path}`" if pipe.name_or_path else ""
    return (
        f"{name}{where}: f{pipe.vae_scale_factor}c{config.latent_channels}, {_steps(config.num_inference_steps)} "
        f"by default, {sum(p.numel() for p in pipe.vae.parameters()) / 1e6:.1f} M parameters."
    )


def _image_panel(key: str, label: str) -> "gr.Image":
    import gradio as gr

    return gr.Image(
        label=label, type="pil", format="png", interactive=False, height=PANEL_HEIGHT, elem_id=f"dito-{key}"
    )


def _controls(reconstructor: DiToReconstructor, examples: list[str]) -> list:
    """The left column: the upload, steps, sampler, seed, tiling and the button; returns them in `run`'s order."""
    import gradio as gr

    label = f"Image (any size up to {reconstructor.max_megapixels:g} MP)"
    upload = gr.File(label=label, file_types=["image"], type="filepath", elem_id="dito-upload")
    steps = gr.Slider(1, MAX_APP_STEPS, reconstructor.default_steps, step=1, label="Steps", elem_id="dito-steps")
    sampler = gr.Radio(list(SAMPLERS), value="Euler", label="Sampler", elem_id="dito-sampler")
    seed = gr.Number(0, precision=0, minimum=0, label="Seed", elem_id="dito-seed")
    tiling = gr.Checkbox(True, label="Tile large images (bounded memory)", elem_id="dito-tiling")
    button = gr.Button("Reconstruct", variant="primary", elem_id="dito-run")
    if examples:
        gr.Examples([[path] for path in examples], inputs=[upload], label="Held-out examples")
    return [upload, steps, sampler, seed, tiling, button]


def build_app(reconstructor: DiToReconstructor, examples: list[str] = (), title: str = "DiTo") -> "gr.Blocks":
    r"""
    The Gradio page: an upload and examples, the controls, original | reconstruction | difference and the metrics.

    A new file or example, a released steps slider, a new sampler or tiling choice, Enter in the seed box and the
    button all reconstruct the current image. Errors (a bad file, an image over the limit) are shown in the
    metrics' place.
    """
    import gradio as gr

    student = reconstructor.student
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"# {title}: reconstruct an image\n{_describe('Model', reconstructor.pipe)}")
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                upload, steps, sampler, seed, tiling, button = _controls(reconstructor, examples)
            with gr.Column(scale=3):
                with gr.Row():
                    images = [_image_panel(key, label) for key, label in IMAGE_PANELS[:3]]
                with gr.Row(visible=student is not None):  # the student's reconstruction under the model's
                    with gr.Column(min_width=160):  # keeps the three columns of the row above
                        gr.Markdown(_describe("Distilled student", student) if student else "")
                    images += [_image_panel(key, label) for key, label in IMAGE_PANELS[3:]]
                metrics = gr.Markdown("Upload an image or pick an example.", elem_id="dito-metrics")
        inputs, outputs = [upload, steps, sampler, seed, tiling], [*images, metrics]
        run = _handler(reconstructor)
        for event in (upload.change, steps.release, sampler.change, seed.submit, tiling.change, button.click):
            # One queue for all: the calls share the pipelines; only the latest of a burst of changes runs.
            event(run, inputs, outputs, concurrency_id="dito", trigger_mode="always_last")
    return demo


def _handler(reconstructor: DiToReconstructor):
    import gradio as gr

    def run(path, steps, sampler, seed, tiling, progress=gr.Progress()):
        blank = [None] * 5
        if not path:
            return *blank, "Upload an image or pick an example."

        def report(done: int, total: int) -> None:
            progress(done / total, desc=f"step {done} of {total}")

        try:
            image = reconstructor.read(path)
            results = reconstructor.reconstruct(image, steps, sampler, seed, tiling, on_step=report)
        except ValueError as err:
            return *blank, f"**Cannot reconstruct this image.** {err}"
        except torch.OutOfMemoryError:
            return *blank, "**Out of memory.** Tick *Tile large images*, or use a smaller image."
        student = results[1] if len(results) > 1 else None
        return (
            image,
            results[0].image,
            results[0].difference,
            student.image if student else None,
            student.difference if student else None,
            format_metrics(image, results, reconstructor.tile_size(image, tiling)),
        )

    return run


# Small images are enlarged to the panel: keep their pixels sharp, so that the reconstruction's detail can be judged.
CSS = " ".join(
    f"#dito-{key} img {{ image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }}"
    for key, _ in IMAGE_PANELS
)


def launch(
    pipe: DiToPipeline,
    student: DiToPipeline | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    max_megapixels: float = APP_MAX_MEGAPIXELS,
    prevent_thread_lock: bool = False,
):
    r"""
    Serve the app on `host`:`port` (loopback by default; never a public share link) until interrupted.

    Args:
        pipe ([`DiToPipeline`]): The model.
        student ([`DiToPipeline`], *optional*): Its distilled student.
        host (`str`, *optional*, defaults to `"127.0.0.1"`): The address to listen on.
        port (`int`, *optional*, defaults to 7860): The port.
        max_megapixels (`float`, *optional*, defaults to 1.0): Larger uploads are refused with a message.
        prevent_thread_lock (`bool`, *optional*, defaults to `False`): Return at once, serving from a thread.

    Returns:
        The Gradio `Blocks` being served; `.close()` stops it.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry and no version check: works offline
    reconstructor = DiToReconstructor(pipe, student, max_megapixels=max_megapixels)
    # The first call pays one-time costs (allocations, kernel selection): keep them out of the first timing shown.
    reconstructor.reconstruct(PIL.Image.new("RGB", (16, 16)), steps=1)
    examples = write_examples()
    demo = build_app(reconstructor, examples)
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        prevent_thread_lock=prevent_thread_lock,
        max_file_size=MAX_UPLOAD_SIZE,
        allowed_paths=[str(Path(path).parent) for path in examples[:1]],
        ssr_mode=False,
        mcp_server=False,
        footer_links=["gradio", "settings"],
        css=CSS,
    )
    return demo
