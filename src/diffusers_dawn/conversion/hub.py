"""
`convert --from-hub`: the official DAWN release on the Hugging Face Hub (`Hanbo-Cheng/DAWN`) plus HuBERT, downloaded
through the Hub cache and converted into a [`DAWNPipeline`] folder with a model card, optionally pushed to the Hub.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence

from diffusers.utils import logging

from .common import CheckpointConversionError
from .convert import OFFICIAL_HUBERT, SUPPORTED_RESOLUTIONS, check_output_dir, convert_official_checkpoints


logger = logging.get_logger(__name__)

OFFICIAL_REPO = "Hanbo-Cheng/DAWN"
DEFAULT_RESOLUTION = 128

# Roles of the official files, in conversion order: checkpoints, then the PBNets' options (`opt.yaml`).
CHECKPOINT_ROLES = ("lfg", "dawn", "pbnet_pose", "pbnet_blink")
OPTIONS_ROLES = {"pbnet_pose": "pbnet_pose_options", "pbnet_blink": "pbnet_blink_options"}
ROLE_NAMES = {
    "lfg": "LFG",
    "dawn": "DAWN A2V-FDM",
    "pbnet_pose": "pose PBNet",
    "pbnet_blink": "blink PBNet",
    "pbnet_pose_options": "pose PBNet options",
    "pbnet_blink_options": "blink PBNet options",
}
# What each role looks like in the official release, for error messages.
ROLE_EXAMPLES = {
    "lfg": "LFG_{resolution}_*.pth",
    "dawn": "DAWN_{resolution}.pth",
    "pbnet_pose": "a checkpoint in a `pose` folder (pbnet/pose/checkpoint_40000.pth.tar)",
    "pbnet_blink": "a checkpoint in a `blink` folder (pbnet/blink/checkpoint_95000.pth.tar)",
}
CHECKPOINT_SUFFIXES = (".pth", ".pth.tar", ".tar", ".pt", ".ckpt", ".bin", ".safetensors")
OPTIONS_SUFFIXES = (".yaml", ".yml")
HUBERT_FILES = ("config.json", "preprocessor_config.json")
HUBERT_WEIGHTS = ("model.safetensors", "pytorch_model.bin")

PARITY_STATEMENT = (
    "Every converted module reproduces the official module's outputs on the official tiny fixtures (LFG, the A2V-FDM "
    "U-Net with its local attention, the DDIM trajectory, both PBNets, and the end-to-end `sample_one_video` through "
    "the pipeline's own sampling path). The conversion renames and splits the official tensors and leaves out the "
    "training-only parts; it changes no value."
)
FACE_LOCATION_STATEMENTS = {
    False: "The face-location encoder is in no official checkpoint (the official models left it at its random "
    "initialisation): it holds PyTorch's default initialisation drawn from a generator seeded 1234.",
    True: "The face-location encoder, in no official checkpoint, holds weights given to the conversion.",
}
TERMS_STATEMENT = (
    "The weights are the official DAWN weights and carry their authors' terms. The official repositories state no "
    "licence, and the DAWN paper says the released code and model are for research purposes only: use these weights "
    "for research only, and cite the paper. The speech encoder is {hubert_repo} under the terms of its own model card."
)


def _tokens(path: str) -> List[str]:
    """Lower-case words and numbers of a path: `pbnet/pose/checkpoint_40000.pth.tar` → pbnet, pose, checkpoint, ..."""
    return re.findall(r"[a-z]+|\d+", path.lower())


def _is_checkpoint(path: str) -> bool:
    return path.lower().endswith(CHECKPOINT_SUFFIXES)


def checkpoint_role(path: str) -> Optional[str]:
    """
    The role of a repository file by its name, or `None`: `LFG…` and `DAWN…` file names (in any folder) are the LFG
    and A2V-FDM checkpoints; a checkpoint with `pose` or `blink` in its path (`pbnet/pose/…`,
    `pbnet_seperate/blink/…`) is that PBNet. The joint `pbnet_both` network of older scripts has neither word and is
    not used.
    """
    if not _is_checkpoint(path):
        return None
    name_tokens = set(_tokens(os.path.basename(path)))
    if "lfg" in name_tokens:
        return "lfg"
    if "dawn" in name_tokens:
        return "dawn"
    path_tokens = set(_tokens(path))
    if "pose" in path_tokens and "blink" not in path_tokens:
        return "pbnet_pose"
    if "blink" in path_tokens and "pose" not in path_tokens:
        return "pbnet_blink"
    return None


def _names_resolution(path: str, resolution: int) -> bool:
    return str(resolution) in _tokens(path)


def _names_any_resolution(path: str) -> bool:
    return any(_names_resolution(path, size) for size in SUPPORTED_RESOLUTIONS)


def _listing(files: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(files[:limit])
    return shown + (f" (and {len(files) - limit} more)" if len(files) > limit else "") if files else "no files"


def select_official_files(
    files: Sequence[str],
    resolution: int,
    repo_id: str = OFFICIAL_REPO,
    chosen: Optional[Mapping[str, str]] = None,
) -> Dict[str, Optional[str]]:
    r"""
    Picks the official files for one resolution from a repository listing.

    Args:
        files: Paths of the repository's files (as `list_repo_files` returns them).
        resolution: 128 or 256; the LFG and DAWN files must name it (`LFG_128_1000ep.pth`, `DAWN_128.pth`), or name no
            size at all when no file of that role names it. The PBNets serve both resolutions.
        repo_id: Used in error messages.
        chosen (*optional*): Paths in the repository that override the choice for a role (`lfg`, `dawn`,
            `pbnet_pose`, `pbnet_blink`, `pbnet_pose_options`, `pbnet_blink_options`).

    Returns:
        `Dict[str, Optional[str]]`: the path of each checkpoint role and of each PBNet's `opt.yaml` (`None` when its
        folder has none: the converter's defaults apply).

    Raises:
        CheckpointConversionError: a role with no candidate (the message names what is missing and what the
            repository holds) or with several (the message names them all).
    """
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise CheckpointConversionError(f"resolution must be one of {SUPPORTED_RESOLUTIONS}, got {resolution}")
    chosen = dict(chosen or {})
    unknown_roles = sorted(set(chosen) - set(ROLE_NAMES))
    if unknown_roles:
        raise ValueError(f"unknown roles {unknown_roles}; known: {sorted(ROLE_NAMES)}")
    for role, path in chosen.items():
        if path not in files:
            raise CheckpointConversionError(
                f"{repo_id}: no file {path!r} (given for the {ROLE_NAMES[role]}); checkpoints there: "
                f"{_listing([name for name in files if _is_checkpoint(name)])}"
            )

    candidates: Dict[str, List[str]] = {role: [] for role in CHECKPOINT_ROLES}
    for path in sorted(files):
        role = checkpoint_role(path)
        if role is not None:
            candidates[role].append(path)
    for role in ("lfg", "dawn"):
        sized = [path for path in candidates[role] if _names_resolution(path, resolution)]
        candidates[role] = sized or [path for path in candidates[role] if not _names_any_resolution(path)]

    selected: Dict[str, Optional[str]] = {}
    missing = []
    for role in CHECKPOINT_ROLES:
        if role in chosen:
            selected[role] = chosen[role]
        elif len(candidates[role]) == 1:
            selected[role] = candidates[role][0]
        elif not candidates[role]:
            missing.append(role)
        else:
            raise CheckpointConversionError(
                f"{repo_id}: {len(candidates[role])} candidate {ROLE_NAMES[role]} checkpoints for "
                f"{resolution}x{resolution}: {', '.join(candidates[role])}; pass --{role.replace('_', '-')} FILE "
                f"(a path in {repo_id}) to choose one"
            )
    if missing:
        expected = "; ".join(
            f"{ROLE_NAMES[role]}: {ROLE_EXAMPLES[role].format(resolution=resolution)}" for role in missing
        )
        raise CheckpointConversionError(
            f"{repo_id}: missing the {' and the '.join(ROLE_NAMES[role] for role in missing)} "
            f"checkpoint{'s' if len(missing) > 1 else ''} for "
            f"{resolution}x{resolution} (expected {expected}); checkpoints there: "
            f"{_listing([name for name in files if _is_checkpoint(name)])}"
        )

    for role, options_role in OPTIONS_ROLES.items():
        if options_role in chosen:
            selected[options_role] = chosen[options_role]
            continue
        # The official `opt.yaml` sits next to its checkpoint.
        folder = os.path.dirname(selected[role])
        beside = [
            path
            for path in files
            if os.path.dirname(path) == folder and path.lower().endswith(OPTIONS_SUFFIXES)
        ]
        named_opt = [path for path in beside if os.path.basename(path).lower().startswith("opt")]
        options = named_opt if len(named_opt) == 1 else beside
        if len(options) > 1:
            raise CheckpointConversionError(
                f"{repo_id}: {len(options)} candidate {ROLE_NAMES[options_role]} files next to {selected[role]}: "
                f"{', '.join(options)}; pass --{options_role.replace('_', '-')} FILE to choose one"
            )
        selected[options_role] = options[0] if options else None
    return selected


def select_hubert_files(files: Sequence[str], repo_id: str) -> List[str]:
    """The files `HubertModel` + `Wav2Vec2FeatureExtractor.from_pretrained` read: configs and one weights file."""
    missing = [name for name in HUBERT_FILES if name not in files]
    weights = [name for name in HUBERT_WEIGHTS if name in files]
    if missing or not weights:
        needed = missing + ([] if weights else [" or ".join(HUBERT_WEIGHTS)])
        raise CheckpointConversionError(
            f"{repo_id}: not a HuBERT model repository (missing {', '.join(needed)}); pass --hubert-repo with "
            f"{OFFICIAL_HUBERT} or a copy of it"
        )
    return [*HUBERT_FILES, weights[0]]


# ---------------------------------------------------------------------------------------------------------------------
# Hub access through the standard cache
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class HubSnapshot:
    """One repository at one commit: the files listed there and where the downloaded ones are in the cache."""

    repo_id: str
    revision: str
    commit: str
    files: List[str]
    local_paths: Dict[str, str] = field(default_factory=dict)

    @property
    def folder(self) -> Optional[str]:
        """The snapshot folder in the cache, where every downloaded file sits at its repository path."""
        for name, path in self.local_paths.items():
            # hf_hub_download returns <cache>/models--owner--name/snapshots/<commit>/<name>.
            return os.path.normpath(path[: len(path) - len(name)]) if path.replace(os.sep, "/").endswith(name) else None
        return None


def _is_offline(local_files_only: bool) -> bool:
    from huggingface_hub import constants

    return local_files_only or bool(constants.HF_HUB_OFFLINE)


def _storage_folder(repo_id: str, cache_dir: Optional[str]) -> str:
    from huggingface_hub import constants

    # The documented cache layout: <cache>/models--<owner>--<name>/{refs,snapshots,blobs}.
    return os.path.join(cache_dir or constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))


def _hub_error(repo_id: str, revision: str, error: BaseException, filename: Optional[str] = None):
    """One line for a huggingface_hub failure, saying what to do (matched by class name: stable across releases)."""
    kinds = {cls.__name__ for cls in type(error).__mro__}
    if "GatedRepoError" in kinds:
        reason = "the repository is gated: accept its terms on its Hub page, then pass --token (or `hf auth login`)"
    elif "RepositoryNotFoundError" in kinds:
        reason = "no such repository (a private one needs --token or `hf auth login`)"
    elif "RevisionNotFoundError" in kinds:
        reason = f"no revision {revision!r} (pass a branch, tag or commit id with --revision)"
    elif "EntryNotFoundError" in kinds:
        reason = f"{filename} is not there" + (" (nor in the cache)" if "LocalEntryNotFoundError" in kinds else "")
    elif "OfflineModeIsEnabled" in kinds or "ConnectionError" in kinds or "ConnectError" in kinds:
        reason = f"the Hub cannot be reached ({type(error).__name__}); with HF_HUB_OFFLINE=1 the cache is used"
    else:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        reason = f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__
    return CheckpointConversionError(f"{repo_id}@{revision}: {reason}")


def resolve_snapshot(
    repo_id: str,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
) -> HubSnapshot:
    """
    Resolves `revision` (a branch, tag or commit id; default `main`) to a commit and lists the repository's files.
    Offline (`HF_HUB_OFFLINE=1` or `local_files_only`), both come from the cache: the commit recorded for the revision
    and the files of that snapshot downloaded before.
    """
    revision = revision or "main"
    if not _is_offline(local_files_only):
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        try:
            commit = api.model_info(repo_id, revision=revision, token=token).sha
            files = api.list_repo_files(repo_id, revision=commit, token=token)
        except OSError as error:  # huggingface_hub's HTTP, not-found and offline errors are all OSErrors
            raise _hub_error(repo_id, revision, error) from None
        return HubSnapshot(repo_id, revision, commit, sorted(files))

    storage = _storage_folder(repo_id, cache_dir)
    commit = revision
    ref = os.path.join(storage, "refs", revision)
    if os.path.isfile(ref):
        with open(ref) as handle:
            commit = handle.read().strip()
    snapshot = os.path.join(storage, "snapshots", commit)
    if not os.path.isdir(snapshot):
        raise CheckpointConversionError(
            f"{repo_id}@{revision} is not in the Hub cache ({os.path.dirname(storage)}) and the Hub is offline "
            "(HF_HUB_OFFLINE=1): run the same command once online, or point --cache-dir at the cache that has it"
        )
    files = [
        os.path.relpath(os.path.join(root, name), snapshot).replace(os.sep, "/")
        for root, _, names in os.walk(snapshot)
        for name in names
    ]
    return HubSnapshot(repo_id, revision, commit, sorted(files))


def download_files(
    snapshot: HubSnapshot,
    filenames: Sequence[str],
    token: Optional[str] = None,
    cache_dir: Optional[str] = None,
    local_files_only: bool = False,
) -> Dict[str, str]:
    """
    Downloads files of `snapshot` at its commit through the Hub cache (with progress bars; a file already in the
    cache is not fetched again) and returns their local paths. The revision name (`main`, a tag) is recorded in the
    cache so that an offline run finds the same commit.
    """
    from huggingface_hub import hf_hub_download

    offline = _is_offline(local_files_only)
    for filename in filenames:
        try:
            snapshot.local_paths[filename] = hf_hub_download(
                snapshot.repo_id,
                filename,
                revision=snapshot.commit,
                token=token,
                cache_dir=cache_dir,
                local_files_only=offline,
            )
        except (OSError, ValueError) as error:  # LocalEntryNotFoundError is also a ValueError on older releases
            raise _hub_error(snapshot.repo_id, snapshot.revision, error, filename) from None
    if snapshot.revision != snapshot.commit and filenames:
        ref = os.path.join(_storage_folder(snapshot.repo_id, cache_dir), "refs", snapshot.revision)
        os.makedirs(os.path.dirname(ref), exist_ok=True)
        with open(ref, "w") as handle:
            handle.write(snapshot.commit)
    return {name: snapshot.local_paths[name] for name in filenames}


def sha256_of_file(path: str, chunk_size: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Model card and push
# ---------------------------------------------------------------------------------------------------------------------
def conversion_command(
    repo_id: str,
    resolution: int,
    commit: str,
    output_dir: str,
    hubert_repo: Optional[str] = OFFICIAL_HUBERT,
    chosen: Optional[Mapping[str, str]] = None,
    face_location_given: bool = False,
) -> str:
    """The `diffusers-dawn convert` command that reproduces a conversion, pinned to the source commit."""
    parts = ["diffusers-dawn convert", f"--from-hub {repo_id}", f"--revision {commit}", f"--resolution {resolution}"]
    parts += [f"--{role.replace('_', '-')} {path}" for role, path in sorted((chosen or {}).items())]
    if hubert_repo is not None and hubert_repo != OFFICIAL_HUBERT:
        parts.append(f"--hubert-repo {hubert_repo}")
    if face_location_given:
        parts.append("--face-location-weights FILE")
    parts.append(f"--output {os.path.basename(os.path.normpath(output_dir)) or output_dir}")
    return " ".join(parts)


def model_card(
    source: HubSnapshot,
    selected: Mapping[str, Optional[str]],
    resolution: int,
    command: str,
    hubert: Optional[HubSnapshot] = None,
    model_name: str = "dawn-{resolution}",
    face_location_given: bool = False,
) -> str:
    """
    The README.md of a converted pipeline: provenance (repository, commit, SHA-256 of each file), use, parity and
    terms. `model_name` is what users pass to `from_pretrained` (the pushed repository or the folder).
    """
    model_name = model_name.format(resolution=resolution)
    from .. import __version__

    hubert_repo = hubert.repo_id if hubert is not None else OFFICIAL_HUBERT
    rows = []
    for role, path in selected.items():
        if path is not None:
            rows.append(f"| {ROLE_NAMES[role]} | `{path}` | `{sha256_of_file(source.local_paths[path])}` |")
    if hubert is not None:
        for path in hubert.local_paths:
            digest = sha256_of_file(hubert.local_paths[path])
            rows.append(f"| speech encoder ({hubert.repo_id}) | `{path}` | `{digest}` |")
    hubert_line = (
        f"- Speech encoder: [{hubert.repo_id}](https://huggingface.co/{hubert.repo_id}), revision `{hubert.revision}`, "
        f"commit `{hubert.commit}`"
        if hubert is not None
        else "- Speech encoder: a local HuBERT folder (see the hashes of the pipeline's `audio_encoder` files)"
    )
    return f"""---
library_name: diffusers
license: other
license_name: dawn-research-only
license_link: https://huggingface.co/{source.repo_id}
tags:
- diffusers-dawn
- talking-head
- audio-to-video
---

# DAWN talking-head pipeline ({resolution}x{resolution}) for diffusers

The official DAWN weights ("DAWN: Dynamic Frame Avatar with Non-autoregressive Diffusion Framework for Talking Head
Video Generation", arXiv 2410.13726) converted into a `DAWNPipeline` folder by diffusers-dawn {__version__}.

## Source

- Official weights: [{source.repo_id}](https://huggingface.co/{source.repo_id}), revision `{source.revision}`, commit
  `{source.commit}`
{hubert_line}

| Role | File | SHA-256 |
|---|---|---|
{chr(10).join(rows)}

Conversion command:

```bash
{command}
```

## Use

With the `diffusers-dawn` package installed:

```bash
diffusers-dawn generate --model {model_name} --image portrait.jpg --audio speech.wav --output talking.mp4
```

```python
from diffusers_dawn import DAWNPipeline

pipe = DAWNPipeline.from_pretrained("{model_name}")
```

## Parity

{PARITY_STATEMENT} {FACE_LOCATION_STATEMENTS[face_location_given]}

## Terms

{TERMS_STATEMENT.format(hubert_repo=hubert_repo)}
"""


def push_folder_to_hub(folder: str, repo_id: str, token: Optional[str] = None, private: Optional[bool] = None) -> str:
    """Creates `repo_id` (when missing) and uploads `folder` as one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message="Converted DAWN pipeline (diffusers-dawn)"
        )
    except OSError as error:
        raise _hub_error(repo_id, "main", error) from None
    return getattr(commit, "commit_url", None) or str(commit)


# ---------------------------------------------------------------------------------------------------------------------
# One call: list, pick, download, convert, write the card, push
# ---------------------------------------------------------------------------------------------------------------------
def convert_from_hub(
    output_dir: "str | os.PathLike",
    repo_id: str = OFFICIAL_REPO,
    resolution: Optional[int] = None,
    revision: Optional[str] = None,
    token: Optional[str] = None,
    cache_dir: Optional["str | os.PathLike"] = None,
    hubert_repo: str = OFFICIAL_HUBERT,
    hubert_revision: Optional[str] = None,
    hubert_path: Optional["str | os.PathLike"] = None,
    chosen_files: Optional[Mapping[str, str]] = None,
    face_location_state_dict=None,
    push_to_hub: Optional[str] = None,
    private: Optional[bool] = None,
    overwrite: bool = False,
    local_files_only: bool = False,
):
    r"""
    Downloads the official DAWN release for one resolution from the Hub and converts it into a [`DAWNPipeline`]
    folder (with a `README.md` model card recording where every file came from), optionally pushed to the Hub.

    The repository's files are listed and each role (LFG, DAWN A2V-FDM, pose and blink PBNets with their `opt.yaml`)
    is picked by name, in any folder (see [`select_official_files`]); a missing or ambiguous role stops before any
    download. Files go through the standard Hub cache (`cache_dir`, default `~/.cache/huggingface/hub`): a second
    run downloads nothing, and with `HF_HUB_OFFLINE=1` everything comes from the cache.

    Args:
        output_dir: Folder to write the pipeline to (must be new or empty unless `overwrite`).
        repo_id: The official weights' repository.
        resolution (*optional*): 128 (default) or 256.
        revision, token, cache_dir: As for `hf_hub_download`; `revision` (branch, tag or commit) applies to
            `repo_id` and is recorded, as its commit id, in the model card.
        hubert_repo, hubert_revision: The speech encoder's repository (`facebook/hubert-large-ls960-ft`).
        hubert_path (*optional*): A local HuBERT folder to use instead of downloading `hubert_repo`.
        chosen_files (*optional*): Paths in `repo_id` that override the automatic choice, by role (`lfg`, `dawn`,
            `pbnet_pose`, `pbnet_blink`, `pbnet_pose_options`, `pbnet_blink_options`).
        face_location_state_dict (*optional*): See [`convert_official_checkpoints`].
        push_to_hub (*optional*): A repository id to upload the converted folder to (created when missing).
        private (*optional*): Visibility of a repository created by `push_to_hub`.
        overwrite (`bool`, defaults to `False`): Allow writing into a non-empty `output_dir`.
        local_files_only (`bool`, defaults to `False`): Use only the cache, as with `HF_HUB_OFFLINE=1`.

    Returns:
        [`DAWNPipeline`]: the converted pipeline (CPU, float32).
    """
    output_dir = os.fspath(output_dir)
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None
    check_output_dir(output_dir, overwrite)
    if resolution is None:
        resolution = DEFAULT_RESOLUTION
        logger.info(f"Frame size {resolution}x{resolution} (default; --resolution 256 selects the 256 release)")
    hub_options = dict(token=token, cache_dir=cache_dir, local_files_only=local_files_only)

    source = resolve_snapshot(repo_id, revision, **hub_options)
    selected = select_official_files(source.files, resolution, repo_id, chosen_files)
    logger.info(f"Official files in {repo_id} (commit {source.commit[:10]}) for {resolution}x{resolution}:")
    for role, path in selected.items():
        logger.info(f"  {ROLE_NAMES[role]:<20} {path if path is not None else '(none: converter defaults)'}")

    hubert = None
    if hubert_path is None:
        hubert = resolve_snapshot(hubert_repo, hubert_revision, **hub_options)
        hubert_files = select_hubert_files(hubert.files, hubert_repo)
    download_files(source, [path for path in selected.values() if path is not None], **hub_options)
    if hubert is not None:
        download_files(hubert, hubert_files, **hub_options)
        hubert_path = hubert.folder

    local = {role: (source.local_paths[path] if path is not None else None) for role, path in selected.items()}
    pipeline = convert_official_checkpoints(
        lfg_path=local["lfg"],
        dawn_path=local["dawn"],
        pbnet_pose_path=local["pbnet_pose"],
        pbnet_blink_path=local["pbnet_blink"],
        output_dir=output_dir,
        hubert_path=hubert_path,
        face_location_state_dict=face_location_state_dict,
        pbnet_pose_options=local["pbnet_pose_options"],
        pbnet_blink_options=local["pbnet_blink_options"],
        resolution=resolution,
        overwrite=overwrite,
    )
    face_location_given = face_location_state_dict is not None
    command = conversion_command(
        repo_id,
        resolution,
        source.commit,
        output_dir,
        hubert_repo if hubert is not None else None,
        chosen_files,
        face_location_given,
    )
    with open(os.path.join(output_dir, "README.md"), "w", encoding="utf-8") as handle:
        model_name = push_to_hub or os.path.basename(os.path.normpath(output_dir))
        handle.write(model_card(source, selected, resolution, command, hubert, model_name, face_location_given))

    if push_to_hub is not None:
        logger.info(f"Uploading {output_dir} to {push_to_hub}")
        url = push_folder_to_hub(output_dir, push_to_hub, token=token, private=private)
        logger.info(f"Pushed: {url}; load it with DAWNPipeline.from_pretrained({push_to_hub!r})")
    return pipeline
