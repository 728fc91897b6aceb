"""Image-mode handling shared by the pipelines, the CLI and the training scripts."""

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
