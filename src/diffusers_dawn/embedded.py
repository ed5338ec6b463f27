"""
Pipelines and demo inputs that ship inside the package, so a first run needs no download.

    from diffusers_dawn import DAWNPipeline
    from diffusers_dawn.embedded import embedded_model_path

    pipe = DAWNPipeline.from_pretrained(embedded_model_path("synthetic-demo"))

This module imports neither torch nor diffusers (the command line reads it before it knows what it will run).
"""

import os
from dataclasses import dataclass
from typing import Dict, Tuple

from .utils.errors import DAWNInputError


ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")


@dataclass(frozen=True)
class EmbeddedModel:
    r"""
    A pipeline folder under `diffusers_dawn/assets/` and the inputs it is demonstrated with.

    Args:
        folder (`str`): The pipeline folder, relative to the assets folder.
        summary (`str`): One line on what the model is (shown by `generate --help` and the web demo).
        demo_image (`str`), demo_audio (`str`): Default portrait and speech, relative to the assets folder.
    """

    folder: str
    summary: str
    demo_image: str
    demo_audio: str


EMBEDDED_MODELS: Dict[str, EmbeddedModel] = {
    "synthetic-demo": EmbeddedModel(
        folder="synthetic-demo",
        summary=(
            "a small DAWN (64 px) trained by this package's recipe on procedural cartoon faces: it animates faces "
            "like those, not photographs"
        ),
        demo_image="synthetic-demo/demo/portrait.png",
        demo_audio="synthetic-demo/demo/speech.wav",
    ),
}
"""Models that `generate --model NAME` and [`embedded_model_path`] know by name; the first is the default."""


def _embedded(name: str) -> EmbeddedModel:
    if name not in EMBEDDED_MODELS:
        raise DAWNInputError(f"unknown embedded model {name!r}; the package ships {sorted(EMBEDDED_MODELS)}")
    return EMBEDDED_MODELS[name]


def embedded_model_path(name: str = "synthetic-demo") -> str:
    r"""
    The folder of an embedded pipeline, to pass to `DAWNPipeline.from_pretrained`.

    Raises:
        `DAWNInputError`: `name` is not an embedded model.
        `FileNotFoundError`: the package was installed without its model files.
    """
    folder = os.path.join(ASSETS, _embedded(name).folder)
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(
            f"the embedded model {name!r} is missing from this installation ({folder}); reinstall diffusers-dawn "
            "with its package data"
        )
    return folder


def embedded_demo_inputs(name: str = "synthetic-demo") -> Tuple[str, str]:
    """Paths of the portrait and speech clip an embedded model is demonstrated with (held out from its training)."""
    model = _embedded(name)
    return os.path.join(ASSETS, model.demo_image), os.path.join(ASSETS, model.demo_audio)
