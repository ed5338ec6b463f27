"""`diffusers-dawn convert --from-hub`: the official release on a Hub (a local Hub-compatible server) → a pipeline."""

import hashlib
import json

import numpy as np
import PIL.Image
import pytest
import soundfile
import torch
import yaml
from huggingface_hub import constants
from safetensors.torch import load_file, save_file
from skimage.data import astronaut

from diffusers_dawn.cli import main
from diffusers_dawn.conversion.common import CheckpointConversionError
from diffusers_dawn.conversion.hub import OFFICIAL_REPO, convert_from_hub, select_official_files
from diffusers_dawn.conversion.lfg import convert_lfg_file
from diffusers_dawn.conversion.pbnet import convert_pbnet_checkpoint
from diffusers_dawn.conversion.unet import convert_dawn_file
from diffusers_dawn.pipelines.pipeline_dawn import DAWNPipeline
from diffusers_dawn.processing.video import read_video

from _conversion_utils import (
    assert_one_error_line,
    assert_state_dicts_equal,
    write_official_checkpoints,
    write_tiny_hubert,
)
from hub_server import USER_NAME, HubServer


TOKEN = "hf_local_test_token"
HUBERT_REPO = "dawn-tester/tiny-hubert-ls960-ft"
RENAMED_REPO = "dawn-mirror/DAWN-weights"

# The official release as the Hub repository Hanbo-Cheng/DAWN lays it out (PBNets in pbnet/{pose,blink}/ with their
# opt.yaml), both resolutions, plus files no role uses.
OFFICIAL_LAYOUT = {
    "lfg": "LFG_128_1000ep.pth",
    "dawn": "DAWN_128.pth",
    "pbnet_pose": "pbnet/pose/checkpoint_40000.pth.tar",
    "pbnet_blink": "pbnet/blink/checkpoint_95000.pth.tar",
}
OFFICIAL_256 = {"lfg": "LFG_256_400ep.pth", "dawn": "DAWN_256.pth"}
UNUSED_FILES = ("README.md", ".gitattributes", "pbnet_both/checkpoint_100000.pth.tar")
# The same files under other folder names (the official README's pretrain_models/ and pbnet_seperate/).
RENAMED_LAYOUT = {
    role: "pretrain_models/" + path.replace("pbnet/", "pbnet_seperate/") for role, path in OFFICIAL_LAYOUT.items()
}
ROLE_OPTIONS = {"pbnet_pose": "pbnet_pose_options", "pbnet_blink": "pbnet_blink_options"}

# Single-pass tolerance of the U-Net parity tests (test_unet_3d_flow.py): CPU reduction order differs.
UNET_ATOL = 2e-5


def pbnet_options(fixtures_dir, kind):
    """
    The options of the fake repository's opt.yaml: the fixture's, with the pose network declared `transformerreemb6`
    (same weights, 100-frame attention window instead of 200), so that the converted config shows the file was read.
    """
    config = json.loads((fixtures_dir / f"pbnet_tiny_{kind}_config.json").read_text())
    options = config["parameters_passed_to_get_model"]
    return {**options, "archiname": "transformerreemb6"} if kind == "pose" else options


@pytest.fixture(scope="module")
def official_blobs(fixtures_dir, tmp_path_factory):
    """Contents of the tiny official-format files by role (checkpoints and the PBNets' opt.yaml)."""
    paths = write_official_checkpoints(fixtures_dir, tmp_path_factory.mktemp("official"))
    blobs = {role: path.read_bytes() for role, path in paths.items()}
    for role, kind in (("pbnet_pose", "pose"), ("pbnet_blink", "blink")):
        blobs[ROLE_OPTIONS[role]] = yaml.safe_dump(pbnet_options(fixtures_dir, kind)).encode()
    return blobs


def repository(blobs, layout, extra=None):
    """Repository files (path → bytes) holding `blobs` at the paths of `layout`, opt.yaml beside each PBNet."""
    files = {path: blobs[role] for role, path in layout.items()}
    for role, options_role in ROLE_OPTIONS.items():
        if role in layout:
            files[layout[role].rsplit("/", 1)[0] + "/opt.yaml"] = blobs[options_role]
    files.update(extra or {})
    return files


@pytest.fixture(scope="module")
def hub(official_blobs, tmp_path_factory):
    with HubServer() as server:
        extra = {path: official_blobs[role] for role, path in OFFICIAL_256.items()}
        extra.update(dict.fromkeys(UNUSED_FILES, b"unused"))
        server.official_commit = server.add_commit(OFFICIAL_REPO, repository(official_blobs, OFFICIAL_LAYOUT, extra))
        server.add_commit(RENAMED_REPO, repository(official_blobs, RENAMED_LAYOUT))
        hubert = write_tiny_hubert(tmp_path_factory.mktemp("hubert"))
        server.add_commit(HUBERT_REPO, {path.name: path.read_bytes() for path in hubert.iterdir()})
        yield server


@pytest.fixture
def hub_endpoint(hub):
    with hub.activate(token=TOKEN):
        yield hub


@pytest.fixture(scope="module")
def face_location_file(fixtures_dir, tmp_path_factory):
    # The fixtures' U-Net outputs were recorded with these face-location weights (in no official checkpoint).
    path = tmp_path_factory.mktemp("face") / "face_loc.safetensors"
    save_file(load_file(str(fixtures_dir / "fdm_tiny_face_loc_emb_weights.safetensors")), str(path))
    return path


def run_convert(capsys, repo_id, output, cache_dir, *options):
    arguments = ["convert", "--from-hub", repo_id, "--output", str(output), "--cache-dir", str(cache_dir)]
    code = main([*arguments, "--hubert-repo", HUBERT_REPO, *map(str, options)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def unet_output(unet, io):
    x = io["in.x"]
    with torch.no_grad():
        return unet(x[:, :3], io["in.time"], io["in.cond"], source_latent=x[:, 3:35], face_location_features=x[:, 35:])


# ------------------------------------------------------------------------------------------------- file selection


def test_selection_by_official_names_for_each_resolution():
    files = [*OFFICIAL_LAYOUT.values(), *OFFICIAL_256.values(), *UNUSED_FILES]
    files += ["pbnet/pose/opt.yaml", "pbnet/blink/opt.yaml"]
    assert select_official_files(files, 128) == {
        **OFFICIAL_LAYOUT,
        "pbnet_pose_options": "pbnet/pose/opt.yaml",
        "pbnet_blink_options": "pbnet/blink/opt.yaml",
    }
    selected = select_official_files(files, 256)
    assert (selected["lfg"], selected["dawn"]) == ("LFG_256_400ep.pth", "DAWN_256.pth")
    assert selected["pbnet_pose"] == OFFICIAL_LAYOUT["pbnet_pose"]
    # Files that name no size serve the requested one when no file names it; without opt.yaml the options are None.
    unsized = ["weights/lfg.pth", "weights/dawn.pth", "pose/model.pt", "blink/model.pt"]
    assert select_official_files(unsized, 256) == {
        "lfg": "weights/lfg.pth",
        "dawn": "weights/dawn.pth",
        "pbnet_pose": "pose/model.pt",
        "pbnet_blink": "blink/model.pt",
        "pbnet_pose_options": None,
        "pbnet_blink_options": None,
    }


def test_ambiguity_names_every_candidate_and_a_chosen_file_resolves_it():
    files = [*RENAMED_LAYOUT.values(), "pretrain_models/LFG_128_500ep.pth"]
    with pytest.raises(CheckpointConversionError) as error:
        select_official_files(files, 128, "someone/DAWN")
    message = str(error.value)
    assert "2 candidate LFG checkpoints for 128x128" in message and "--lfg FILE" in message
    assert "pretrain_models/LFG_128_1000ep.pth" in message and "pretrain_models/LFG_128_500ep.pth" in message
    chosen = select_official_files(files, 128, chosen={"lfg": "pretrain_models/LFG_128_500ep.pth"})
    assert chosen["lfg"] == "pretrain_models/LFG_128_500ep.pth"
    with pytest.raises(CheckpointConversionError, match="no file 'LFG_9.pth'"):
        select_official_files(files, 128, chosen={"lfg": "LFG_9.pth"})


# ------------------------------------------------------------------------------------------- conversion and parity


@pytest.mark.parametrize("repo_id, layout", [(OFFICIAL_REPO, OFFICIAL_LAYOUT), (RENAMED_REPO, RENAMED_LAYOUT)])
def test_from_hub_converts_and_reproduces_the_fixtures(
    hub_endpoint, capsys, fixtures_dir, official_blobs, face_location_file, tmp_path, repo_id, layout
):
    output = tmp_path / "dawn-128"
    code, stdout, stderr = run_convert(
        capsys, repo_id, output, tmp_path / "cache", "--resolution", 128, "--face-location-weights", face_location_file
    )
    assert code == 0, stderr
    assert str(output) in stdout
    # The choice for each role is reported, by its path in the repository.
    for path in layout.values():
        assert path in stderr
    assert "opt.yaml" in stderr

    pipe = DAWNPipeline.from_pretrained(output)
    assert pipe.config.resolution == 128
    checkpoints = write_official_checkpoints(fixtures_dir, tmp_path / "local")
    assert_state_dicts_equal(pipe.lfg, convert_lfg_file(checkpoints["lfg"]), "lfg")
    face_location = load_file(str(face_location_file))
    assert_state_dicts_equal(pipe.unet, convert_dawn_file(checkpoints["dawn"], face_location), "unet")
    for role, kind in (("pbnet_pose", "pose"), ("pbnet_blink", "blink")):
        weights = load_file(str(fixtures_dir / f"pbnet_tiny_{kind}_weights.safetensors"))
        # The opt.yaml beside each checkpoint was used (architecture window, dropout, activation).
        expected = convert_pbnet_checkpoint(weights, pbnet_options(fixtures_dir, kind))
        assert_state_dicts_equal(getattr(pipe, role), expected, role)
        public = {key: value for key, value in getattr(pipe, role).config.items() if not key.startswith("_")}
        assert public == {key: value for key, value in expected.config.items() if not key.startswith("_")}, role
    assert (pipe.pbnet_pose.config.window, pipe.pbnet_blink.config.window) == (100, 200)

    # The converted U-Net reproduces the official module's recorded outputs.
    io = load_file(str(fixtures_dir / "fdm_tiny_unet_short8_io.safetensors"))
    torch.testing.assert_close(unet_output(pipe.unet, io).sample, io["out.eps"], atol=UNET_ATOL, rtol=1e-5)

    card = (output / "README.md").read_text()
    commit = hub_endpoint.repositories[repo_id].commits[-1].oid
    assert f"commit\n  `{commit}`" in card or f"commit `{commit}`" in card
    assert f"--from-hub {repo_id} --revision {commit} --resolution 128" in card
    for role, path in layout.items():
        assert f"`{path}` | `{hashlib.sha256(official_blobs[role]).hexdigest()}` |" in card
    assert HUBERT_REPO in card and "research purposes only" in card and "changes no value" in card
    assert "--face-location-weights FILE" in card and "holds weights given to the conversion" in card


def test_resolution_256_takes_the_256_files(hub_endpoint, tmp_path):
    pipe = convert_from_hub(
        tmp_path / "dawn-256", resolution=256, cache_dir=tmp_path / "cache", hubert_repo=HUBERT_REPO
    )
    assert pipe.config.resolution == 256
    card = (tmp_path / "dawn-256" / "README.md").read_text()
    assert "`LFG_256_400ep.pth`" in card and "`DAWN_256.pth`" in card and "LFG_128" not in card
    assert "generator seeded 1234" in card and "--face-location-weights" not in card
    assert 'DAWNPipeline.from_pretrained("dawn-256")' in card


def test_second_run_uses_the_cache_and_offline_mode_works(hub_endpoint, capsys, tmp_path, monkeypatch):
    hub, cache = hub_endpoint, tmp_path / "cache"
    before = len(hub.downloads())
    assert run_convert(capsys, RENAMED_REPO, tmp_path / "first", cache)[0] == 0
    downloaded = hub.downloads()[before:]
    # The four checkpoints, two opt.yaml and three HuBERT files, each once.
    assert len(downloaded) == 9 and len(set(downloaded)) == 9

    assert run_convert(capsys, RENAMED_REPO, tmp_path / "second", cache)[0] == 0
    assert len(hub.downloads()) == before + 9

    requests = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert run_convert(capsys, RENAMED_REPO, tmp_path / "offline", cache)[0] == 0
    assert len(hub.requests) == requests
    first = DAWNPipeline.from_pretrained(tmp_path / "first")
    offline = DAWNPipeline.from_pretrained(tmp_path / "offline")
    for name in ("lfg", "unet", "pbnet_pose", "pbnet_blink", "audio_encoder"):
        assert_state_dicts_equal(getattr(offline, name), getattr(first, name), name)

    # Offline with an empty cache: one line saying what to do.
    code, _, stderr = run_convert(capsys, RENAMED_REPO, tmp_path / "nothing", tmp_path / "empty-cache")
    assert_one_error_line(code, stderr, RENAMED_REPO, "not in the Hub cache", "HF_HUB_OFFLINE")
    assert not (tmp_path / "nothing").exists()


def test_revision_pins_the_source_commit(hub_endpoint, official_blobs, tmp_path):
    repo_id = f"{USER_NAME}/DAWN-history"
    complete = hub_endpoint.add_commit(repo_id, repository(official_blobs, OFFICIAL_LAYOUT))
    without_blink = {role: path for role, path in OFFICIAL_LAYOUT.items() if role != "pbnet_blink"}
    hub_endpoint.add_commit(repo_id, repository(official_blobs, without_blink))
    with pytest.raises(CheckpointConversionError, match="missing the blink PBNet"):
        convert_from_hub(tmp_path / "latest", repo_id, cache_dir=tmp_path / "cache", hubert_repo=HUBERT_REPO)
    convert_from_hub(
        tmp_path / "pinned", repo_id, revision=complete, cache_dir=tmp_path / "cache", hubert_repo=HUBERT_REPO
    )
    assert f"--revision {complete}" in (tmp_path / "pinned" / "README.md").read_text()


# ----------------------------------------------------------------------------------------------------- bad input


def test_repository_without_the_blink_pbnet_is_one_error_line(hub_endpoint, official_blobs, capsys, tmp_path):
    repo_id = f"{USER_NAME}/DAWN-no-blink"
    without_blink = {role: path for role, path in OFFICIAL_LAYOUT.items() if role != "pbnet_blink"}
    hub_endpoint.add_commit(repo_id, repository(official_blobs, without_blink))
    before = len(hub_endpoint.downloads())
    output = tmp_path / "out"
    code, _, stderr = run_convert(capsys, repo_id, output, tmp_path / "cache")
    assert_one_error_line(code, stderr, repo_id, "missing the blink PBNet checkpoint", "blink", "LFG_128_1000ep.pth")
    # Nothing was downloaded or written.
    assert len(hub_endpoint.downloads()) == before
    assert not output.exists()


def test_two_lfg_candidates_are_one_error_line_naming_both(hub_endpoint, official_blobs, capsys, tmp_path):
    repo_id = f"{USER_NAME}/DAWN-two-lfg"
    extra = {"LFG_128_500ep.pth": official_blobs["lfg"]}
    hub_endpoint.add_commit(repo_id, repository(official_blobs, OFFICIAL_LAYOUT, extra))
    code, _, stderr = run_convert(capsys, repo_id, tmp_path / "out", tmp_path / "cache")
    assert_one_error_line(code, stderr, "2 candidate LFG checkpoints", "LFG_128_1000ep.pth", "LFG_128_500ep.pth")


def test_unknown_repository_is_one_error_line(hub_endpoint, capsys, tmp_path):
    code, _, stderr = run_convert(capsys, f"{USER_NAME}/no-such-repo", tmp_path / "out", tmp_path / "cache")
    assert_one_error_line(code, stderr, f"{USER_NAME}/no-such-repo")


def test_convert_needs_from_hub_or_the_four_files(capsys, tmp_path):
    code = main(["convert", "--output", str(tmp_path / "out"), "--lfg", "LFG_128_1000ep.pth"])
    stderr = capsys.readouterr().err
    assert_one_error_line(code, stderr, "--from-hub REPO", "missing: --dawn, --pbnet-pose, --pbnet-blink")


# ------------------------------------------------------------------------------------------------------- pushing


def test_push_to_hub_then_from_pretrained_round_trips(hub_endpoint, capsys, tmp_path):
    repo_id = f"{USER_NAME}/dawn-128-converted"
    output = tmp_path / "dawn-128"
    code, stdout, stderr = run_convert(capsys, OFFICIAL_REPO, output, tmp_path / "cache", "--push-to-hub", repo_id)
    assert code == 0, stderr
    assert repo_id in stdout
    pushed = hub_endpoint.files(repo_id)
    assert pushed["README.md"] == (output / "README.md").read_bytes()
    assert f'DAWNPipeline.from_pretrained("{repo_id}")' in pushed["README.md"].decode()
    assert json.loads(pushed["model_index.json"])["_class_name"] == "DAWNPipeline"

    local = DAWNPipeline.from_pretrained(output)
    remote = DAWNPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "other-cache")
    for name in ("lfg", "unet", "pbnet_pose", "pbnet_blink", "audio_encoder"):
        assert_state_dicts_equal(getattr(remote, name), getattr(local, name), name)
    assert remote.config.resolution == local.config.resolution == 128
    assert remote.feature_extractor.to_dict() == local.feature_extractor.to_dict()

    # The converted folder is ready for `generate` as it is.
    image, speech, video = tmp_path / "portrait.png", tmp_path / "speech.wav", tmp_path / "talking.mp4"
    PIL.Image.fromarray(astronaut()).save(image)
    time = np.arange(16000 * 6 // 10) / 16000
    soundfile.write(speech, (0.3 * np.sin(2 * np.pi * 180 * time)).astype(np.float32), 16000)
    arguments = ["--image", image, "--audio", speech, "--output", video, "--steps", 1, "--device", "cpu"]
    assert main(["generate", "--model", str(output), *map(str, arguments)]) == 0
    frames = read_video(video)[0]
    assert frames.shape == (15, 128, 128, 3) and frames.std() > 1.0
