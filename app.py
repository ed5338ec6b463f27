"""
The web demo as a Hugging Face Space (Gradio SDK) or on any host: `python app.py` serves it on all interfaces, port
$GRADIO_SERVER_PORT (default 7860).
The same page as `diffusers-dawn demo`; set DAWN_DEMO_MODEL to a pipeline folder or Hub id to offer that model.
"""

import os
import sys


try:
    import diffusers_dawn  # noqa: F401
except ImportError:  # a checkout that is not pip-installed (a Space serves the repository as is)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from diffusers_dawn.cli import EMBEDDED_MODELS  # noqa: E402
from diffusers_dawn.demo.app import build_demo, launch_demo  # noqa: E402
from diffusers_dawn.demo.handlers import DemoSession  # noqa: E402


models = [os.environ["DAWN_DEMO_MODEL"]] if os.environ.get("DAWN_DEMO_MODEL") else list(EMBEDDED_MODELS)
demo = build_demo(DemoSession(models))

if __name__ == "__main__":
    launch_demo(demo, host="0.0.0.0")
