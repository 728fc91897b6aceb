"""Where the metrics that need pretrained weights find them: an argument, else an environment variable.

Nothing here downloads anything. A metric whose weights are not found raises [`MissingWeightsError`], whose
one-line message names the argument, the environment variable and the file it expects.
"""

import os
from pathlib import Path

INCEPTION_WEIGHTS_ENV = "DITO_INCEPTION_WEIGHTS"
DINOV2_PATH_ENV = "DITO_DINOV2_PATH"
LPIPS_BACKBONE_ENV = "DITO_LPIPS_BACKBONE"


class MissingWeightsError(RuntimeError):
    """A metric needs pretrained weights that were not supplied; the message says, in one line, how to supply them."""


def _resolve_path(value: str | os.PathLike | None, env: str) -> Path | None:
    value = value if value is not None else os.environ.get(env) or None
    return None if value is None else Path(value).expanduser()
