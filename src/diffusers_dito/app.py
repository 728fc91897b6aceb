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

What one request may cost is bounded: the pixels after padding to a multiple of the down-sampling factor, the tiles
of a tiled decode, and the seconds of work (`time_limit`). A request whose page has gone (closed, cancelled) stops
at its next network evaluation. Uploads and outputs are deleted from Gradio's cache after an hour, and all of them,
with the examples, when the server stops.

Examples:
    diffusers-dito app --model dito-demo                # the folder `python training/demo.py` writes
    diffusers-dito app --model my-dito --student my-dito-student --port 7861
"""

import contextlib
import contextvars
import ipaddress
import math
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler
from diffusers.hooks import HookRegistry, ModelHook

from .image_utils import read_image
from .limits import APP_MAX_MEGAPIXELS, APP_TILES_PER_MEGAPIXEL, APP_TIME_LIMIT, MAX_SEED
from .metrics import psnr, ssim
from .models.tiling import tile_starts
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
# A running request sends its page a progress line every POLL_SECONDS, and Gradio asks for the next one only while
# the page is there: without that request for CLIENT_GONE_AFTER seconds, the client has gone and the work stops.
POLL_SECONDS = 0.5
CLIENT_GONE_AFTER = 10.0
# Gradio's `delete_cache` (frequency, age): every 10 min, uploads and outputs older than 1 h are deleted; all of them
# when the server stops.
DELETE_CACHE = (600, 3600)
STOP_HOOK = "dito_app_stop"


class ReconstructionStopped(Exception):
    """A reconstruction stopped before its end, because its time budget ran out or its client went away."""


class _StopCheck(ModelHook):
    """Before each network evaluation (one tile of one step, encoder or decoder), stop the running request if it
    must stop: `reason()` says why, or returns None."""

    def __init__(self, reason: Callable[[], str | None]):
        super().__init__()
        self.reason = reason

    def pre_forward(self, module: torch.nn.Module, *args, **kwargs):
        reason = self.reason()
        if reason is not None:
            raise ReconstructionStopped(reason)
        return args, kwargs


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


def _whole_number(value, message: str) -> int:
    """`value` as an int where it is a whole number (an int, or a float such as 12.0, as Gradio's number widgets
    send); else a `ValueError` with `message`, never a silent rounding of 2.7 to 2."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    raise ValueError(f"{message}, got {value!r}.")


def _megapixels(value: float, limit: float) -> str:
    """`value` with the fewest decimals (at least one) that show it is over `limit`: 1.008 MP, not 1.0 MP."""
    digits = next((d for d in range(1, 7) if round(value, d) > limit), 6)
    return f"{value:.{digits}f}"


class DiToReconstructor:
    r"""
    What the web app runs: reconstructions of one image by a DiTo pipeline and, where given, its distilled student.

    Calls are serialised by a lock, because the sampler and tiling are set on the shared pipelines for each call.
    Before every network evaluation a hook (`diffusers.hooks`) checks whether the call must stop: past `time_limit`,
    or when its `should_stop` says so; it then raises [`ReconstructionStopped`].

    Args:
        pipe ([`DiToPipeline`]): The model.
        student ([`DiToPipeline`], *optional*): A distilled student, decoded with its own scheduler and its
            config's `num_inference_steps` (1 for `training/distill_dito.py`'s students).
        max_megapixels (`float`, *optional*, defaults to 1.0): Larger images, counted once padded to a multiple of
            the down-sampling factor, are refused with a message; so are images that a tiled decode would cut into
            more than `64 × max_megapixels` tiles a step.
        time_limit (`float`, *optional*): Seconds of work a call may take (both pipelines together); `None`: no
            limit.

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
        self,
        pipe: DiToPipeline,
        student: DiToPipeline | None = None,
        max_megapixels: float = APP_MAX_MEGAPIXELS,
        time_limit: float | None = None,
    ):
        self.pipe, self.student, self.max_megapixels, self.time_limit = pipe, student, max_megapixels, time_limit
        self.max_tiles = math.ceil(APP_TILES_PER_MEGAPIXEL * max_megapixels)
        self.shift = float(pipe.scheduler.config.get("shift", 1.0))  # the saved shift applies to both samplers
        self.lock = threading.Lock()
        self._stop_reason: Callable[[], str | None] = lambda: None  # the running call's, set under the lock
        for pipeline in (pipe, student):
            if pipeline is not None:
                pipeline.set_progress_bar_config(disable=True)  # the page shows progress; the console stays quiet
                for module in (pipeline.vae.encoder, pipeline.vae.decoder_unet):
                    registry = HookRegistry.check_if_exists_or_initialize(module)
                    if registry.get_hook(STOP_HOOK) is not None:  # the pipelines were served before
                        registry.remove_hook(STOP_HOOK)
                    registry.register_hook(_StopCheck(lambda: self._stop_reason()), STOP_HOOK)

    @property
    def default_steps(self) -> int:
        return min(self.pipe.vae.config.num_inference_steps, MAX_APP_STEPS)

    def tile_size(self, image: PIL.Image.Image, tiling: bool) -> int | None:
        """The side of the tiles `image` is decoded in, or `None` where it is decoded whole."""
        tile = self.pipe.vae.tile_sample_size
        return tile if tiling and max(image.size) > tile else None

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        """The size the pipelines work at: each side padded up to a multiple of the down-sampling factor."""
        f = self.pipe.vae_scale_factor
        return -(-width // f) * f, -(-height // f) * f

    def tiles_per_step(self, width: int, height: int) -> int:
        """The network evaluations of one step of a tiled decode of a `width`×`height` image (1 where it fits one
        tile)."""
        vae = self.pipe.vae
        width, height = self.padded_size(width, height)
        return len(tile_starts(height, vae.tile_sample_size, vae.tile_overlap)) * len(
            tile_starts(width, vae.tile_sample_size, vae.tile_overlap)
        )

    def check_size(self, width: int, height: int, tiling: bool = False) -> None:
        """Raise a `ValueError` that says what to do if a `width`×`height` image is over the size limit, counted
        once padded, or, with `tiling`, takes more tiles a step than allowed."""
        padded = self.padded_size(width, height)
        megapixels = padded[0] * padded[1] / 1e6
        if megapixels > self.max_megapixels:
            size = f"{width}×{height} px"
            if padded != (width, height):
                size += f", {padded[0]}×{padded[1]} once padded to a multiple of {self.pipe.vae_scale_factor}"
            raise ValueError(
                f"The image is {size} ({_megapixels(megapixels, self.max_megapixels)} MP); this app reconstructs up "
                f"to {self.max_megapixels:g} MP. Downscale or crop it, or restart the app with "
                f"--max-megapixels {math.ceil(megapixels)}."
            )
        tiles = self.tiles_per_step(width, height)
        if tiling and tiles > self.max_tiles:
            raise ValueError(
                f"In tiles of {self.pipe.vae.tile_sample_size}² px, this {width}×{height} px image takes {tiles} "
                f"tiles a step; this app allows {self.max_tiles}. Crop it nearer to a square, or untick *Tile large "
                "images*."
            )

    def read(self, path: str | os.PathLike, name: str | None = None) -> PIL.Image.Image:
        """The image file at `path` as RGB, or a one-line `ValueError` naming the file (as `name`, the upload's own
        name, where given) and never a traceback."""
        path, name = str(path), name or Path(path).name
        size = None
        try:
            with PIL.Image.open(path) as image:
                size = image.size  # from the header: a huge image is refused before it is decoded
        except (OSError, SyntaxError, ValueError, PIL.Image.DecompressionBombError):
            pass  # `read_image` says what is wrong with the file
        if size is not None:
            self.check_size(*size)  # the pixels; the tiles are checked with the request's tiling
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
        should_stop: Callable[[], str | None] | None = None,
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
            should_stop (`Callable[[], str | None]`, *optional*): Asked before every network evaluation; a string
                (why) stops the call.

        Returns:
            `list[Reconstruction]`: The model's, then the student's.

        Raises:
            `ValueError`: A setting or the image size is out of bounds; the message says what is allowed.
            [`ReconstructionStopped`]: The call ran past `time_limit`, or `should_stop` said why it must stop.
        """
        steps, seed = self._check_settings(steps, sampler, seed, tiling)
        self.check_size(*image.size, tiling=tiling)
        with self.lock, self._stopping(should_stop):
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

    def _check_settings(self, steps, sampler, seed, tiling) -> tuple[int, int]:
        """The steps and seed as ints, or a `ValueError` for a setting out of bounds or of the wrong type (as an API
        call may send them)."""
        steps_range = f"Steps must be a whole number in [1, {MAX_APP_STEPS}]"
        steps = self.default_steps if steps is None else _whole_number(steps, steps_range)
        if not 1 <= steps <= MAX_APP_STEPS:
            raise ValueError(f"{steps_range}, got {steps}.")
        if sampler not in SAMPLERS:
            raise ValueError(f"The sampler must be one of {list(SAMPLERS)}, got {sampler!r}.")
        seed_range = "The seed must be an integer in [0, 2**64 - 1]"
        seed = _whole_number(seed, seed_range)  # the page's number box gives a float, or None when empty
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{seed_range}, got {seed}.")
        if not isinstance(tiling, (bool, np.bool_)):
            raise ValueError(f"Tiling must be true or false, got {tiling!r}.")
        return steps, seed

    @contextlib.contextmanager
    def _stopping(self, should_stop: Callable[[], str | None] | None):
        """While the block runs, the stop hooks ask `should_stop`, and stop the call past `time_limit`."""
        deadline = None if self.time_limit is None else time.monotonic() + self.time_limit

        def reason() -> str | None:
            if deadline is not None and time.monotonic() > deadline:
                return (
                    f"It took longer than the {self.time_limit:g} s this app gives a request; use fewer steps, the "
                    "Euler sampler or a smaller image."
                )
            return should_stop() if should_stop is not None else None

        self._stop_reason = reason
        try:
            yield
        finally:
            self._stop_reason = lambda: None


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


def build_app(
    reconstructor: DiToReconstructor,
    examples: list[str] = (),
    title: str = "DiTo",
    delete_cache: tuple[int, int] | None = DELETE_CACHE,
) -> "gr.Blocks":
    r"""
    The Gradio page: an upload and examples, the controls, original | reconstruction | difference and the metrics.

    A new file or example, a released steps slider, a new sampler or tiling choice, Enter in the seed box and the
    button all reconstruct the current image (the button's event is the API endpoint `/reconstruct`). Errors (a bad
    file, an image over the limit) are shown in the metrics' place. `delete_cache` is Gradio's: (every how many
    seconds, files older than how many seconds) of the uploads and outputs are deleted, and all of them at shutdown.
    """
    import gradio as gr

    student = reconstructor.student
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as demo:
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
        # One queue for all: the calls share the pipelines; only the latest of a burst of changes runs. The inputs
        # reach `run` as sent (`preprocess=False`; `run` checks them): gr.File's own preprocessing would leave an
        # empty temporary file in Gradio's cache for every request, which nothing deletes. The upload's path is
        # still checked by Gradio to be an upload (or an example).
        listen = dict(concurrency_id="dito", trigger_mode="always_last", preprocess=False)
        run = _handler(reconstructor)
        for event in (upload.change, steps.release, sampler.change, seed.submit, tiling.change):
            event(run, inputs, outputs, api_visibility="undocumented", **listen)
        button.click(run, inputs, outputs, api_name="reconstruct", **listen)
    return demo


class _Job:
    """
    One request of the page, worked in a thread while the request's generator polls it. Gradio resumes a generator
    only while its client is there, and closes it on a cancel: a job that nobody polled for CLIENT_GONE_AFTER seconds
    is told to stop (`client_gone`, asked by the stop hooks).
    """

    def __init__(self, work: Callable[["_Job"], tuple]):
        self.polled = time.monotonic()
        self.step: tuple[int, int | None] = (0, None)  # (steps done, total) of the running decode
        self._result = {}
        # The copied context carries Gradio's request (its progress bar) into the thread.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._work, work), daemon=True)
        self._thread.start()

    def _work(self, work: Callable[["_Job"], tuple]) -> None:
        try:
            self._result["outputs"] = work(self)
        except BaseException as err:  # raised again in the request's own thread, by `outputs`
            self._result["error"] = err

    def client_gone(self) -> str | None:
        if time.monotonic() - self.polled > CLIENT_GONE_AFTER:
            return "the page that asked for it has gone"
        return None

    def poll(self) -> Iterator[str]:
        """A progress line every POLL_SECONDS while the work runs."""
        try:
            while self._thread.is_alive():
                self._thread.join(POLL_SECONDS)
                if self._thread.is_alive():
                    done, total = self.step
                    yield f"Reconstructing: step {done} of {total}." if total else "Encoding."
                    self.polled = time.monotonic()
        finally:
            if self._thread.is_alive():  # the generator was closed: cancelled, or its client left
                self.polled = -math.inf

    def outputs(self) -> tuple:
        if "error" in self._result:
            raise self._result["error"]
        return self._result["outputs"]


def _handler(reconstructor: DiToReconstructor):
    import gradio as gr

    blank = (None,) * 5

    def outputs(upload: dict, steps, sampler, seed, tiling, report, should_stop) -> tuple:
        """The page's six outputs for one request: the images and the metrics, or a message in the metrics' place."""
        if not isinstance(upload, dict) or not isinstance(upload.get("path"), str):  # an API call's own value
            return *blank, "**Cannot reconstruct this image.** Expected one uploaded image file."
        try:
            image = reconstructor.read(upload["path"], upload.get("orig_name"))
            results = reconstructor.reconstruct(image, steps, sampler, seed, tiling, report, should_stop)
        except ValueError as err:
            return *blank, f"**Cannot reconstruct this image.** {err}"
        except ReconstructionStopped as err:
            return *blank, f"**Stopped.** {err}"
        except torch.OutOfMemoryError:
            return *blank, "**Out of memory.** Tick *Tile large images*, or use a smaller image."
        student = results[1] if len(results) > 1 else None
        panels = [image, results[0].image, results[0].difference]
        panels += [student.image, student.difference] if student else [None, None]
        # Gradio writes an image output to a path named by the hash of its PNG, in place: two requests with the
        # same output would rewrite one file while it is being downloaded. A text chunk of its own (Gradio keeps
        # PNG text) gives each request's files their own paths.
        request = uuid.uuid4().hex
        for panel in filter(None, panels):
            panel.info["diffusers-dito request"] = request
        return *panels, format_metrics(image, results, reconstructor.tile_size(image, tiling))

    def run(upload, steps, sampler, seed, tiling, progress=gr.Progress()):
        if not upload:
            yield *blank, "Upload an image or pick an example."
            return

        def work(job: _Job) -> tuple:
            def report(done: int, total: int) -> None:
                job.step = (done, total)
                progress(done / total, desc=f"step {done} of {total}")

            return outputs(upload, steps, sampler, seed, tiling, report, job.client_gone)

        job = _Job(work)
        for status in job.poll():
            # Plain values, not gr.skip(): an update would give the session new output components, whose files
            # Gradio's delete_cache does not track.
            yield *blank, f"*{status}*"
        yield job.outputs()

    return run


# Small images are enlarged to the panel: keep their pixels sharp, so that the reconstruction's detail can be judged.
CSS = " ".join(
    f"#dito-{key} img {{ image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }}"
    for key, _ in IMAGE_PANELS
)


def exposure_warning(host: str) -> str | None:
    r"""
    What serving on `host` exposes, where it is not a loopback address; `None` for loopback.

    Examples:
        ```py
        >>> from diffusers_dito.app import exposure_warning

        >>> exposure_warning("127.0.0.1") is None, "without a login" in exposure_warning("0.0.0.0")
        (True, True)

        ```
    """
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (
        f"listening on {host}, so anyone who can reach this machine can upload images and run the model on it, "
        "without a login. To use the app from another machine, keep --host 127.0.0.1 and forward the port "
        "(ssh -L 7860:127.0.0.1:7860 this-machine), or put it behind a proxy that asks for a login."
    )


def launch(
    pipe: DiToPipeline,
    student: DiToPipeline | None = None,
    *,
    host: str = "127.0.0.1",
    port: int | None = 7860,
    max_megapixels: float = APP_MAX_MEGAPIXELS,
    time_limit: float | None = APP_TIME_LIMIT,
    delete_cache: tuple[int, int] | None = DELETE_CACHE,
    prevent_thread_lock: bool = False,
):
    r"""
    Serve the app on `host`:`port` (loopback by default; never a public share link) until interrupted.

    Args:
        pipe ([`DiToPipeline`]): The model.
        student ([`DiToPipeline`], *optional*): Its distilled student.
        host (`str`, *optional*, defaults to `"127.0.0.1"`): The address to listen on; any other than loopback is
            warned about on stderr ([`exposure_warning`]).
        port (`int`, *optional*, defaults to 7860): The port.
        max_megapixels (`float`, *optional*, defaults to 1.0): Larger uploads are refused with a message.
        time_limit (`float`, *optional*, defaults to 300): Seconds of work a request may take; `None`: no limit.
        delete_cache (`tuple[int, int]`, *optional*, defaults to `(600, 3600)`): Gradio's: every 600 s, uploads
            and outputs older than 3600 s are deleted; all of them when the server stops.
        prevent_thread_lock (`bool`, *optional*, defaults to `False`): Return at once, serving from a thread.

    Returns:
        The Gradio `Blocks` being served; `.close()` stops it. Without `prevent_thread_lock`, it returns once Ctrl-C
        or SIGTERM has stopped the server, with its files deleted.
    """
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry and no version check: works offline
    if (warning := exposure_warning(host)) is not None:
        print(f"diffusers-dito app: warning: {warning}", file=sys.stderr)
    reconstructor = DiToReconstructor(pipe, student, max_megapixels=max_megapixels, time_limit=time_limit)
    # The first call pays one-time costs (allocations, kernel selection): keep them out of the first timing shown.
    reconstructor.reconstruct(PIL.Image.new("RGB", (16, 16)), steps=1)
    examples_folder, examples = _static_examples()
    demo = build_app(reconstructor, examples, delete_cache=delete_cache)
    weakref.finalize(demo, examples_folder.cleanup)  # with the app, or at exit
    demo.queue(default_concurrency_limit=1)
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        quiet=True,  # Gradio would suggest `share=True`, a public link, which this app never makes
        prevent_thread_lock=True,
        max_file_size=MAX_UPLOAD_SIZE,
        ssr_mode=False,
        mcp_server=False,
        footer_links=["gradio", "settings"],
        css=CSS,
    )
    print(f"diffusers-dito app: serving on http://{host}:{demo.server_port} (Ctrl-C stops it)", flush=True)
    if not prevent_thread_lock:
        _serve_until_stopped(demo, examples_folder)
    return demo


def _static_examples() -> tuple[tempfile.TemporaryDirectory, list[str]]:
    """The examples, in a temporary folder that Gradio serves as it is (`set_static_paths`): copied into Gradio's
    cache, they would be deleted with the uploads."""
    import gradio as gr

    folder = tempfile.TemporaryDirectory(prefix="dito-app-examples-")
    gr.set_static_paths([folder.name])
    return folder, write_examples(folder.name)


def _serve_until_stopped(demo: "gr.Blocks", examples_folder: tempfile.TemporaryDirectory) -> None:
    """Block until Ctrl-C or SIGTERM, which stop the server alike: Gradio then deletes its files, and the examples
    go too."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if in_main_thread else None
    try:
        demo.block_thread()
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        examples_folder.cleanup()
