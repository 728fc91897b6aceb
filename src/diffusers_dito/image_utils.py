"""Reading image files and converting image modes, shared by the pipelines, the CLI, the web app and the training
scripts."""

import os
import sys
from pathlib import Path

import numpy as np
import PIL.Image


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    r"""
    Convert any PIL image to 8-bit RGB, correctly for the modes that a plain `.convert("RGB")` gets wrong.

    - 16-bit and 32-bit integer grayscale (`I;16*`, `I`) and float (`F`) are rescaled to 0–255 by their type's
      range (PIL would clip them to white);
    - images with transparency (`RGBA`, `LA`, `PA`, palette with a transparent index) are composited on white, so
      hidden pixels under alpha do not leak into the result;
    - `CMYK`, `YCbCr`, `L`, `1` and palette images go through PIL's own conversion.

    Examples:
        ```py
        >>> import numpy as np
        >>> import PIL.Image
        >>> from diffusers_dito.image_utils import to_rgb

        >>> deep = PIL.Image.fromarray(np.full((2, 2), 65535, dtype=np.uint16))  # 16-bit white
        >>> to_rgb(deep).getpixel((0, 0))
        (255, 255, 255)

        ```
    """
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image).astype(np.float64)
        if mode == "F":
            low, high = float(array.min()), float(array.max())
            array = (array - low) / (high - low or 1.0) * 255.0
        else:
            array = array / (65535.0 if mode.startswith("I;16") or array.max() <= 65535 else array.max()) * 255.0
        gray = PIL.Image.fromarray(np.clip(array.round(), 0, 255).astype(np.uint8), mode="L")
        return gray.convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(path: str | os.PathLike) -> PIL.Image.Image:
    r"""
    The image file at `path` as 8-bit RGB ([`to_rgb`]). An animated file gives its first frame, with a note on stderr.

    Raises:
        `ValueError`: One line naming `path` and what is wrong: a folder, a missing file, an image too large to
            decode safely (PIL's decompression-bomb limit) or a file that is not a readable image.

    Examples:
        ```py
        >>> from diffusers_dito.image_utils import read_image

        >>> try:
        ...     read_image("no-such-photo.png")
        ... except ValueError as err:
        ...     print(err)
        no-such-photo.png: no such file

        ```
    """
    name = str(path)
    if Path(path).is_dir():
        raise ValueError(f"{name}: is a directory, not an image file")
    try:
        with PIL.Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                print(f"diffusers-dito: note: {name} has {frames} frames; reconstructing the first", file=sys.stderr)
            return to_rgb(image)
    except FileNotFoundError:
        raise ValueError(f"{name}: no such file") from None
    except PIL.Image.DecompressionBombError as err:
        raise ValueError(f"{name}: too large to open safely ({err})") from None
    except (PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{name}: not a readable image ({err.__class__.__name__})") from None
