"""
Models and inputs that ship inside the package, so that a first video needs no download.

`synthetic-demo` is a small DAWN (64 px) trained by `training/recipes/synthetic_demo.py` on procedural talking faces:
it animates faces like those (drawn, tightly framed), not photographs. Its default inputs are a held-out portrait and
speech clip of the same generator (never seen in training).

    from diffusers_dawn import DAWNPipeline, embedded_model_path

    pipe = DAWNPipeline.from_pretrained(embedded_model_path("synthetic-demo"))
"""

import os
from typing import Dict


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")

# Name → folder under `assets/` of the pipelines that ship with the package.
EMBEDDED_MODELS: Dict[str, str] = {"synthetic-demo": "synthetic-demo"}
DEFAULT_MODEL = "synthetic-demo"

# The default inputs of `diffusers-dawn generate`: a held-out synthetic portrait and its speech.
DEMO_ASSETS = os.path.join(ASSETS, "demo")
DEMO_IMAGE = os.path.join(DEMO_ASSETS, "synthetic_portrait.png")
DEMO_AUDIO = os.path.join(DEMO_ASSETS, "synthetic_speech.wav")
# A photograph (public domain) for trying the pipeline on a real face with converted official weights.
PHOTO_PORTRAIT = os.path.join(DEMO_ASSETS, "portrait.jpg")


class EmbeddedModelMissingError(FileNotFoundError):
    """An embedded model's folder is not in this installation."""


def embedded_model_path(name: str = DEFAULT_MODEL) -> str:
    """
    The folder of an embedded pipeline, for `DAWNPipeline.from_pretrained`.

    Raises:
        KeyError: `name` is not an embedded model (the message lists them).
        EmbeddedModelMissingError: the folder is missing from this installation (a broken or partial install).
    """
    if name not in EMBEDDED_MODELS:
        raise KeyError(f"{name!r} is not an embedded model; embedded models: {', '.join(sorted(EMBEDDED_MODELS))}")
    folder = os.path.join(ASSETS, EMBEDDED_MODELS[name])
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise EmbeddedModelMissingError(
            f"the embedded model {name!r} is missing from this installation ({folder}); reinstall diffusers-dawn"
        )
    return folder
