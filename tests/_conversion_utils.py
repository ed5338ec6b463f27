"""Official-layout checkpoint files built from the tiny parity fixtures, for converter and CLI tests."""

from pathlib import Path
from typing import Dict

import torch
from safetensors.torch import load_file

from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert


LFG_SUB_DICTS = ("generator", "region_predictor", "bg_predictor")


def official_lfg_checkpoint(fixtures_dir: Path) -> Dict:
    """The fixture's flat `<sub-dict>.<key>` tensors regrouped as the official LFG `.pth` dict."""
    flat = load_file(str(fixtures_dir / "lfg_tiny_weights.safetensors"))
    checkpoint = {name: {} for name in LFG_SUB_DICTS}
    for key, value in flat.items():
        name, rest = key.split(".", 1)
        checkpoint[name][rest] = value
    return checkpoint


def official_dawn_checkpoint(fixtures_dir: Path) -> Dict:
    """The official DAWN `.pth` layout: `diffusion` plus the training entries inference ignores."""
    diffusion = load_file(str(fixtures_dir / "fdm_tiny_diffusion_weights.safetensors"))
    return {"example": 0, "diffusion": diffusion, "optimizer_diff": {}}


def official_pbnet_checkpoint(fixtures_dir: Path, kind: str) -> Dict:
    """The official PBNet `checkpoint_*.pth.tar`: the flat model state dict."""
    return load_file(str(fixtures_dir / f"pbnet_tiny_{kind}_weights.safetensors"))


def write_official_checkpoints(fixtures_dir: Path, folder: Path) -> Dict[str, Path]:
    """Writes the four tiny checkpoints as official `.pth` files; returns their paths by CLI option name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "lfg": folder / "LFG_tiny.pth",
        "dawn": folder / "DAWN_tiny.pth",
        "pbnet_pose": folder / "pose" / "checkpoint_tiny.pth.tar",
        "pbnet_blink": folder / "blink" / "checkpoint_tiny.pth.tar",
    }
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(official_lfg_checkpoint(fixtures_dir), paths["lfg"])
    torch.save(official_dawn_checkpoint(fixtures_dir), paths["dawn"])
    torch.save(official_pbnet_checkpoint(fixtures_dir, "pose"), paths["pbnet_pose"])
    torch.save(official_pbnet_checkpoint(fixtures_dir, "blink"), paths["pbnet_blink"])
    return paths


def write_tiny_hubert(folder: Path) -> Path:
    """Saves the tiny HuBERT model and its feature extractor as a `--hubert` folder."""
    model, feature_extractor = build_tiny_hubert()
    model.save_pretrained(folder)
    feature_extractor.save_pretrained(folder)
    return folder


def assert_state_dicts_equal(actual, expected, what):
    """Two modules hold the same tensors under the same names, bit for bit and in the same dtype."""
    actual, expected = actual.state_dict(), expected.state_dict()
    assert actual.keys() == expected.keys(), what
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, f"{what}: {key}"
        assert torch.equal(actual[key], value), f"{what}: {key} differs"


def assert_one_error_line(code, stderr, *fragments) -> str:
    """A `diffusers-dawn` bad-input exit: status 2, exactly one error line holding every fragment, no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("diffusers-dawn: error: ")]
    assert code == 2
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]
