"""`diffusers-dawn convert` / `convert_official_checkpoints`: official files → a loadable DAWNPipeline folder."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusers_dawn.cli import main
from diffusers_dawn.conversion.common import CheckpointConversionError
from diffusers_dawn.conversion.convert import convert_official_checkpoints, guess_resolution
from diffusers_dawn.conversion.lfg import convert_lfg_file
from diffusers_dawn.conversion.pbnet import convert_pbnet_file
from diffusers_dawn.conversion.unet import convert_dawn_file
from diffusers_dawn.pipelines.pipeline_dawn import DAWNPipeline
from diffusers_dawn.schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler
from diffusers_dawn.testing.tiny_hubert import build_tiny_hubert

from _conversion_utils import (
    assert_one_error_line,
    assert_state_dicts_equal,
    official_dawn_checkpoint,
    write_official_checkpoints,
    write_tiny_hubert,
)


@pytest.fixture(scope="module")
def official_files(fixtures_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    paths = write_official_checkpoints(fixtures_dir, folder)
    paths["hubert"] = write_tiny_hubert(folder / "hubert")
    return paths


def convert_arguments(files, output, **replaced):
    """CLI arguments of a conversion of `files`, with some options replaced (None drops an option)."""
    options = {
        "--lfg": files["lfg"],
        "--dawn": files["dawn"],
        "--pbnet-pose": files["pbnet_pose"],
        "--pbnet-blink": files["pbnet_blink"],
        "--hubert": files["hubert"],
        "--output": output,
    }
    options.update({f"--{name.replace('_', '-')}": value for name, value in replaced.items()})
    arguments = ["convert"]
    for option, value in options.items():
        if value is not None:
            arguments += [option, str(value)]
    return arguments


def run_cli(capsys, arguments):
    code = main(arguments)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------------------------------- full conversion


@pytest.fixture(scope="module")
def converted_folder(official_files, tmp_path_factory):
    output = tmp_path_factory.mktemp("converted") / "dawn-tiny"
    assert main(convert_arguments(official_files, output)) == 0
    return output


def test_cli_conversion_loads_and_equals_the_per_model_converters(official_files, converted_folder):
    pipe = DAWNPipeline.from_pretrained(converted_folder)

    assert_state_dicts_equal(pipe.lfg, convert_lfg_file(official_files["lfg"]), "lfg")
    assert_state_dicts_equal(pipe.unet, convert_dawn_file(official_files["dawn"]), "unet")
    assert_state_dicts_equal(pipe.pbnet_pose, convert_pbnet_file(official_files["pbnet_pose"]), "pbnet_pose")
    assert_state_dicts_equal(pipe.pbnet_blink, convert_pbnet_file(official_files["pbnet_blink"]), "pbnet_blink")
    hubert, feature_extractor = build_tiny_hubert()
    assert_state_dicts_equal(pipe.audio_encoder, hubert, "audio_encoder")
    assert pipe.feature_extractor.to_dict() == feature_extractor.to_dict()

    assert isinstance(pipe.scheduler, DAWNDDIMScheduler)
    assert torch.equal(pipe.scheduler.alphas_cumprod, DAWNDDIMScheduler().alphas_cumprod)
    # The file names of the tiny checkpoints name no size: the default 128 applies.
    assert pipe.config.resolution == 128


def test_converted_unet_keeps_the_checkpoint_weights(fixtures_dir, converted_folder):
    # Independent of the per-model converters: one official tensor, found under its new name.
    official = load_file(str(fixtures_dir / "fdm_tiny_diffusion_weights.safetensors"))
    pipe = DAWNPipeline.from_pretrained(converted_folder)
    assert torch.equal(pipe.unet.state_dict()["conv_in.weight"], official["denoise_fn.init_conv.weight"])


def test_python_api_with_face_location_weights_and_named_resolution(fixtures_dir, official_files, tmp_path):
    face_location = load_file(str(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors"))
    dawn_256 = tmp_path / "DAWN_256.pth"
    dawn_256.write_bytes(official_files["dawn"].read_bytes())
    pipe = convert_official_checkpoints(
        official_files["lfg"],
        dawn_256,
        official_files["pbnet_pose"],
        official_files["pbnet_blink"],
        output_dir=None,
        hubert_path=official_files["hubert"],
        face_location_state_dict=face_location,
    )
    assert pipe.config.resolution == 256
    encoder = pipe.unet.face_location_encoder.state_dict()
    for key, value in face_location.items():
        assert torch.equal(encoder[key], value), key
    assert not any(tmp_path.glob("*/model_index.json"))


def test_cli_reads_face_location_weights_from_a_file(fixtures_dir, official_files, tmp_path, capsys):
    weights = tmp_path / "face_loc.safetensors"
    face_location = load_file(str(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors"))
    # The official FlowDiffusion names them `face_loc_emb.*`; both spellings are accepted.
    save_file({f"face_loc_emb.{key}": value for key, value in face_location.items()}, str(weights))
    output = tmp_path / "out"
    code, stdout, _ = run_cli(capsys, convert_arguments(official_files, output, face_location_weights=weights))
    assert code == 0 and str(output) in stdout
    encoder = DAWNPipeline.from_pretrained(output).unet.face_location_encoder.state_dict()
    for key, value in face_location.items():
        assert torch.equal(encoder[key], value), key


# ------------------------------------------------------------------------------------------------------ bad input


def test_truncated_checkpoint_is_one_error_line(official_files, tmp_path, capsys):
    truncated = tmp_path / "DAWN_tiny.pth"
    data = official_files["dawn"].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    output = tmp_path / "out"
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, output, dawn=truncated))
    assert_one_error_line(code, stderr, str(truncated), "truncated or corrupt")
    assert not output.exists()


def test_lfg_file_given_as_dawn_is_one_error_line(official_files, tmp_path, capsys):
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, tmp_path / "out", dawn=official_files["lfg"]))
    assert_one_error_line(code, stderr, "expected a DAWN A2V-FDM checkpoint", "the file is an LFG checkpoint")


def test_unknown_key_is_one_error_line(fixtures_dir, official_files, tmp_path, capsys):
    checkpoint = official_dawn_checkpoint(fixtures_dir)
    checkpoint["diffusion"]["denoise_fn.extra_head.weight"] = torch.zeros(3)
    path = tmp_path / "DAWN_extra.pth"
    torch.save(checkpoint, path)
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, tmp_path / "out", dawn=path))
    assert_one_error_line(code, stderr, "unknown key", "denoise_fn.extra_head.weight")


def test_other_diffusion_schedule_is_refused(fixtures_dir, official_files, tmp_path, capsys):
    checkpoint = official_dawn_checkpoint(fixtures_dir)
    diffusion = checkpoint["diffusion"]
    # A linear-beta schedule (DDPM's), as another training setup would store it.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    diffusion["alphas_cumprod"] = torch.cumprod(1 - betas, 0).float()
    path = tmp_path / "DAWN_linear.pth"
    torch.save(checkpoint, path)
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, tmp_path / "out", dawn=path))
    assert_one_error_line(code, stderr, "diffusion schedule", "DAWNDDIMScheduler")


def test_missing_checkpoint_file_is_one_error_line(official_files, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "LFG_128_1000ep.pth"
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, tmp_path / "out", lfg=missing))
    assert_one_error_line(code, stderr, str(missing), "no such file")


def test_swapped_pose_and_blink_networks_are_refused(official_files, tmp_path, capsys):
    arguments = convert_arguments(
        official_files,
        tmp_path / "out",
        pbnet_pose=official_files["pbnet_blink"],
        pbnet_blink=official_files["pbnet_pose"],
    )
    code, _, stderr = run_cli(capsys, arguments)
    assert_one_error_line(code, stderr, "did you swap --pbnet-pose and --pbnet-blink")


def test_without_hubert_nothing_is_written_and_the_user_is_told_what_to_pass(official_files, tmp_path, capsys):
    output = tmp_path / "out"
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, output, hubert=None))
    assert_one_error_line(code, stderr, "convert needs --hubert DIR", "--from-hub")
    assert not output.exists()
    # `--help` shows it among the required options of the local-files form (no brackets) and says where to get it.
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    usage = capsys.readouterr().out
    assert " --hubert DIR " in usage.split("\n\n")[0] and "[--hubert" not in usage
    assert "facebook/hubert-large-ls960-ft" in usage
    files = {name: official_files[name] for name in ("lfg", "dawn", "pbnet_pose", "pbnet_blink")}
    with pytest.raises(CheckpointConversionError, match="facebook/hubert-large-ls960-ft.*--hubert DIR"):
        convert_official_checkpoints(**{f"{name}_path": path for name, path in files.items()}, output_dir=output)
    assert not output.exists()


def test_pickle_with_code_is_refused_for_safety(official_files, tmp_path, capsys):
    import argparse

    holds_objects = tmp_path / "DAWN_tiny.pth"
    torch.save({"diffusion": {}, "args": argparse.Namespace(lr=1e-4)}, holds_objects)
    output = tmp_path / "out"
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, output, dawn=holds_objects))
    line = assert_one_error_line(code, stderr, str(holds_objects), "refused for safety", "argparse.Namespace")
    assert "weights_only" not in line and "truncated" not in line
    assert not output.exists()


def test_hubert_of_another_width_is_refused(official_files, tmp_path, capsys):
    model, extractor = build_tiny_hubert(hidden_size=48)
    folder = tmp_path / "hubert48"
    model.save_pretrained(folder)
    extractor.save_pretrained(folder)
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, tmp_path / "out", hubert=folder))
    assert_one_error_line(code, stderr, "DAWN U-Net 32", "HuBERT (hidden_size) 48")


def test_non_empty_output_folder_needs_overwrite(official_files, tmp_path, capsys):
    output = tmp_path / "out"
    output.mkdir()
    (output / "notes.txt").write_text("keep me")
    code, _, stderr = run_cli(capsys, convert_arguments(official_files, output))
    assert_one_error_line(code, stderr, "not empty", "--overwrite")
    assert sorted(path.name for path in output.iterdir()) == ["notes.txt"]


def test_debug_shows_the_traceback(official_files, tmp_path):
    arguments = convert_arguments(official_files, tmp_path / "out", dawn=official_files["lfg"])
    for debug_arguments in (["--debug", *arguments], [*arguments, "--debug"]):
        with pytest.raises(CheckpointConversionError, match="expected a DAWN"):
            main(debug_arguments)


def test_resolution_is_read_from_official_file_names():
    assert guess_resolution("ckpt/LFG_128_1000ep.pth", "ckpt/DAWN_128.pth") == 128
    assert guess_resolution("LFG_256_400ep.pth", "/models/DAWN_256.pth") == 256
    assert guess_resolution("lfg.pth", "dawn.pth") is None
    # 1000ep must not read as a size, nor 2560 as 256.
    assert guess_resolution("LFG_1000ep.pth", "DAWN_2560.pth") is None
    with pytest.raises(CheckpointConversionError, match="both 128 and 256"):
        guess_resolution("LFG_128_1000ep.pth", "DAWN_256.pth")
