"""DAWNPipeline: one portrait + one speech clip → a talking-head video, generated for the whole clip at once."""

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.schedulers import KarrasDiffusionSchedulers
from diffusers.utils import logging
from diffusers.utils.torch_utils import randn_tensor
from transformers import HubertModel, Wav2Vec2FeatureExtractor

from ..loaders.lora import DAWNLoraLoaderMixin
from ..models.lfg import LFGAutoencoder
from ..models.pbnet import PBNetModel
from ..models.unet_3d_flow import UNet3DFlowModel, build_condition
from ..processing.audio import AUDIO_SAMPLING_RATE, VIDEO_FPS, compute_hubert_features, load_audio, num_video_frames
from ..processing.compositing import CompositedVideo, FrameCompositor
from ..processing.face import FaceAnalyzer, face_mask
from ..processing.image import (
    CropTransform,
    crop_to_face,
    float_image_tensor,
    image_to_tensor,
    load_image,
    resize_square,
)
from ..processing.video import read_video
from ..schedulers.scheduling_dawn_ddim import DAWNDDIMScheduler
from ..utils.diffusers_compat import loadable_component_modules
from ..utils.errors import DAWNInputError
from .pipeline_output import DAWNPipelineOutput


logger = logging.get_logger(__name__)

ImageInput = Union[str, PIL.Image.Image, np.ndarray, torch.Tensor]
AudioInput = Union[str, np.ndarray, torch.Tensor]


@dataclass
class SourcePortrait:
    """The portrait as the models see it, with the face measurements the conditions are relative to."""

    image: torch.Tensor  # (1, 3, S, S) in [0, 1]
    face_box: np.ndarray  # [x_min, x_max, y_min, y_max, H, W] in the pixels of `image`
    pose: np.ndarray  # (6,) official units
    blink: np.ndarray  # (2,) eye aspect ratios
    photo: Optional[PIL.Image.Image] = None  # the whole (EXIF-rotated) picture, when a face crop was cut from it
    crop_transform: Optional[CropTransform] = None  # crop ↔ photo pixels, with `photo`


@dataclass
class SpeechConditions:
    """Per-frame speech features and, when the speech came as a waveform, the waveform itself."""

    features: torch.Tensor  # (frames, hidden)
    waveform: Optional[np.ndarray] = None  # 16 kHz mono, trimmed to frames / fps seconds


class DAWNPipeline(DiffusionPipeline, DAWNLoraLoaderMixin):
    r"""
    Talking-head generation with DAWN (Dynamic frame Avatar With Non-autoregressive diffusion).

    A portrait and a speech clip go in; the pipeline measures the face (pose, eye blink ratio, face box), encodes
    the speech with HuBERT, samples head pose and blinks for every frame with the two PBNets (or takes them from
    the caller or from a driving video), denoises the motion latents of the **whole clip in one pass** with the
    A2V-FDM 3-D U-Net, and renders the frames with the latent flow generator's decoder.

    Args:
        lfg ([`LFGAutoencoder`]): Latent flow generator: encodes the portrait, decodes frames from motion latents.
        unet ([`UNet3DFlowModel`]): A2V-FDM denoiser of motion latents.
        scheduler ([`DAWNDDIMScheduler`] or one of [`KarrasDiffusionSchedulers`]):
            [`DAWNDDIMScheduler`] reproduces the official sampler; any diffusers scheduler built with
            `X.from_config(pipe.scheduler.config)` sees the same training schedule.
        pbnet_pose ([`PBNetModel`], *optional*): Pose generator (6-D head pose per frame). Without it, pass `pose`
            or `driving_video`.
        pbnet_blink ([`PBNetModel`], *optional*): Blink generator (2 eye aspect ratios per frame). Without it,
            pass `blink` or `driving_video`.
        audio_encoder ([`~transformers.HubertModel`], *optional*): Speech encoder (hubert-large-ls960-ft for
            official weights). Without it, pass `audio_features`.
        feature_extractor ([`~transformers.Wav2Vec2FeatureExtractor`], *optional*): Waveform normalisation for
            `audio_encoder`.
        resolution (`int`, defaults to 128): Side of the square frames the models work at.
        face_backend (`str`, defaults to `"auto"`): Face analysis backend, see [`FaceAnalyzer`].
        crop (`str`, defaults to `"face"`): `"face"` crops a face-centred square, `"resize"` squashes the whole
            image to a square like the official code.
        crop_scale (`float`, defaults to 2.0): Side of the face crop relative to the face box size.
        paste_back (`bool`, defaults to `False`): Return full-frame videos (the generated face crops blended back
            into the photo, see [`FrameCompositor`]) instead of the crops; needs `crop="face"`.
        guidance_scale (`float`, defaults to 1.0): The classifier-free guidance `__call__` uses when it is given
            none: 1.0 (off) as the official sampler; a model trained with a null condition may recommend more.
    """

    model_cpu_offload_seq = "audio_encoder->pbnet_pose->pbnet_blink->lfg->unet"
    # A pipeline without them still runs when the caller gives what they would produce (audio_features, pose,
    # blink), e.g. the validation pipeline of A2V-FDM training.
    _optional_components = ["pbnet_pose", "pbnet_blink", "audio_encoder", "feature_extractor"]
    _callback_tensor_inputs = ["latents", "encoder_hidden_states"]

    def __init__(
        self,
        lfg: LFGAutoencoder,
        unet: UNet3DFlowModel,
        scheduler: Union[DAWNDDIMScheduler, KarrasDiffusionSchedulers],
        pbnet_pose: Optional[PBNetModel] = None,
        pbnet_blink: Optional[PBNetModel] = None,
        audio_encoder: Optional[HubertModel] = None,
        feature_extractor: Optional[Wav2Vec2FeatureExtractor] = None,
        resolution: int = 128,
        face_backend: str = "auto",
        crop: str = "face",
        crop_scale: float = 2.0,
        paste_back: bool = False,
        guidance_scale: float = 1.0,
    ):
        super().__init__()
        self.register_modules(
            lfg=lfg,
            unet=unet,
            pbnet_pose=pbnet_pose,
            pbnet_blink=pbnet_blink,
            scheduler=scheduler,
            audio_encoder=audio_encoder,
            feature_extractor=feature_extractor,
        )
        if guidance_scale < 1.0:
            raise ValueError(f"guidance_scale must be >= 1 (1 disables guidance), got {guidance_scale}")
        self.register_to_config(
            resolution=resolution, face_backend=face_backend, crop=crop, crop_scale=crop_scale,
            paste_back=paste_back, guidance_scale=guidance_scale,
        )  # fmt: skip
        self._face_analyzer = None

    @classmethod
    def download(cls, pretrained_model_name, **kwargs) -> str:
        """
        Downloads a DAWN pipeline repository from the Hub (what `from_pretrained(repo_id)` calls), see
        [`~DiffusionPipeline.download`].

        diffusers' download accepts component libraries it knows (diffusers, transformers, ...) or custom-code files
        stored in the repository. DAWN's components come from this installed package, recorded in model_index.json
        under their module paths, so those modules are made known to it for the duration of the call.
        """
        modules = [model.__module__ for model in (LFGAutoencoder, UNet3DFlowModel, PBNetModel, DAWNDDIMScheduler)]
        with loadable_component_modules(modules):
            return super().download(pretrained_model_name, **kwargs)

    # ------------------------------------------------------------------------------------------------------------
    # Properties in the diffusers style
    # ------------------------------------------------------------------------------------------------------------
    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self):
        return self._guidance_scale != 1.0

    @property
    def num_timesteps(self):
        return self._num_timesteps

    @property
    def interrupt(self):
        return self._interrupt

    @property
    def attention_kwargs(self):
        return self._attention_kwargs

    @property
    def latent_size(self) -> int:
        # The motion-latent grid: the image downsampled by the LFG encoder's stride-2 blocks.
        return self.config.resolution // self.lfg.latent_downsampling

    @property
    def face_analyzer(self) -> FaceAnalyzer:
        """Face analysis used for the portrait and driving videos; created on first use from `face_backend`."""
        if self._face_analyzer is None:
            self._face_analyzer = FaceAnalyzer(backend=self.config.face_backend)
        return self._face_analyzer

    @face_analyzer.setter
    def face_analyzer(self, analyzer: FaceAnalyzer):
        self._face_analyzer = analyzer

    # ------------------------------------------------------------------------------------------------------------
    # 1. Portrait → source image + face measurements
    # ------------------------------------------------------------------------------------------------------------
    def prepare_source(
        self,
        image: ImageInput,
        face_landmarks: Optional[np.ndarray] = None,
        face_box: Optional[np.ndarray] = None,
        source_pose: Optional[np.ndarray] = None,
        source_blink: Optional[np.ndarray] = None,
        crop: Optional[str] = None,
    ) -> SourcePortrait:
        """
        Loads the portrait, measures its face, and brings both to the model resolution.

        `face_box` ([x_min, x_max, y_min, y_max, H, W] in the pixels of the given image), `source_pose` and
        `source_blink` skip the corresponding measurements. With `crop="none"` the image must already be square at
        the model resolution.
        """
        resolution = self.config.resolution
        crop = crop or self.config.crop
        if crop not in ("face", "resize", "none"):
            raise DAWNInputError(f"crop must be 'face', 'resize' or 'none', got {crop!r}")
        picture = load_image(image)
        width, height = picture.size

        needs_analysis = source_pose is None or source_blink is None or face_box is None
        if needs_analysis:
            analysis = self.face_analyzer.analyze(
                np.asarray(picture),
                landmarks=face_landmarks,
                face_box=None if face_box is None else np.asarray(face_box, dtype=np.float64)[:4],
            )
            face_box = analysis.face_box if face_box is None else face_box
            source_pose = analysis.pose if source_pose is None else source_pose
            source_blink = analysis.eye_ratios if source_blink is None else source_blink
        photo, crop_transform = None, None
        face_box = np.asarray(face_box, dtype=np.float64).reshape(-1)
        if face_box.shape[0] == 4:
            face_box = np.concatenate([face_box, [height, width]])
        if face_box.shape[0] != 6:
            raise DAWNInputError(f"face_box must be [x_min, x_max, y_min, y_max] or [..., H, W], got {face_box.tolist()}")

        if crop == "face":
            cropped, crop_transform = crop_to_face(picture, face_box, size=resolution, scale=self.config.crop_scale)
            box_in_crop = crop_transform.box_to_crop(face_box[:4])
            face_box = np.array([*box_in_crop, resolution, resolution], dtype=np.float64)
            photo, picture = picture, cropped
        elif crop == "resize":
            # Official behaviour: squash the whole image to a square; the box keeps its original-pixel layout
            # [.., H, W] because the face mask normalises by those last two entries.
            picture = resize_square(picture, resolution)
        elif picture.size != (resolution, resolution):
            raise DAWNInputError(
                f"crop='none' needs a {resolution}x{resolution} image, got {picture.size[0]}x{picture.size[1]}; "
                "use crop='face' or crop='resize'"
            )
        # An uncropped float tensor is used as given (no 8-bit round trip), e.g. frames from a dataset or a test.
        exact = float_image_tensor(image) if crop == "none" else None
        return SourcePortrait(
            image=exact if exact is not None else image_to_tensor(picture),
            face_box=face_box,
            pose=np.asarray(source_pose, dtype=np.float64).reshape(6),
            blink=np.asarray(source_blink, dtype=np.float64).reshape(2),
            photo=photo,
            crop_transform=crop_transform,
        )

    # ------------------------------------------------------------------------------------------------------------
    # 2. Speech → per-frame features
    # ------------------------------------------------------------------------------------------------------------
    def encode_speech(
        self,
        audio: Optional[AudioInput] = None,
        sampling_rate: Optional[int] = None,
        audio_features: Optional[Union[np.ndarray, torch.Tensor]] = None,
        num_frames: Optional[int] = None,
    ) -> SpeechConditions:
        """HuBERT features at 25 fps (official recipe), or the caller's precomputed `audio_features`."""
        if audio_features is not None:
            features = torch.as_tensor(np.asarray(audio_features) if not torch.is_tensor(audio_features) else audio_features)
            features = features.reshape(-1, features.shape[-1]).float()
            if num_frames is not None:
                features = features[:num_frames]
            return SpeechConditions(features=features)
        if audio is None:
            raise DAWNInputError(_NO_SPEECH)
        if self.audio_encoder is None or self.feature_extractor is None:
            raise DAWNInputError(_NO_AUDIO_ENCODER)
        return self.encode_waveform(self.load_speech(audio, sampling_rate), num_frames)

    def load_speech(self, audio: AudioInput, sampling_rate: Optional[int] = None) -> np.ndarray:
        """The speech as 16 kHz mono samples: decoding and resampling only, no model runs."""
        return load_audio(audio, sampling_rate=sampling_rate, target_rate=AUDIO_SAMPLING_RATE)

    def encode_waveform(self, waveform: np.ndarray, num_frames: Optional[int] = None) -> SpeechConditions:
        """HuBERT features at 25 fps of 16 kHz mono samples from [`load_speech`], cut to `num_frames`."""
        frames = num_video_frames(len(waveform))
        if num_frames is not None:
            if num_frames > frames:
                raise DAWNInputError(f"num_frames={num_frames} exceeds the {frames} frames the audio lasts")
            frames = num_frames
        features = compute_hubert_features(
            waveform, self.audio_encoder, self.feature_extractor, num_frames=num_video_frames(len(waveform))
        )[:frames]
        samples = int(round(frames / VIDEO_FPS * AUDIO_SAMPLING_RATE))
        return SpeechConditions(features=features.float().cpu(), waveform=waveform[:samples])

    # ------------------------------------------------------------------------------------------------------------
    # 3. Head pose and blinks per frame
    # ------------------------------------------------------------------------------------------------------------
    def prepare_pose_and_blink(
        self,
        source: SourcePortrait,
        speech: SpeechConditions,
        pose: Optional[np.ndarray] = None,
        blink: Optional[np.ndarray] = None,
        driving_video: Optional[str] = None,
        generator: Optional[torch.Generator] = None,
    ):
        """
        Returns (pose (F, 6), blink (F, 2)) in raw units. Sources, by priority: the caller's arrays, a driving video
        (its motion relative to its first frame, applied to the portrait's pose), the PBNets (sampled from
        `generator`).
        """
        num_frames = speech.features.shape[0]
        if driving_video is not None and (pose is None or blink is None):
            driven_pose, driven_blink = self._motion_from_driving_video(driving_video, source, num_frames)
            pose = driven_pose if pose is None else pose
            blink = driven_blink if blink is None else blink
        device = self._execution_device
        audio = speech.features[None].to(device)
        for name, values, model in (("pose", pose, self.pbnet_pose), ("blink", blink, self.pbnet_blink)):
            if values is None and model is None:
                raise DAWNInputError(
                    f"this pipeline has no pbnet_{name}: pass `{name}` (one row per frame) or a `driving_video`"
                )
        if pose is None:
            initial = torch.as_tensor(source.pose, dtype=self.pbnet_pose.dtype, device=device).reshape(1, 1, 6)
            pose = self.pbnet_pose.generate_states(initial, audio.to(self.pbnet_pose.dtype), generator=generator)[0]
        if blink is None:
            initial = torch.as_tensor(source.blink, dtype=self.pbnet_blink.dtype, device=device).reshape(1, 1, 2)
            blink = self.pbnet_blink.generate_states(initial, audio.to(self.pbnet_blink.dtype), generator=generator)[0]
        pose = _as_array(pose, "pose", 6)
        blink = _as_array(blink, "blink", 2)
        for name, values in (("pose", pose), ("blink", blink)):
            if values.shape[0] != num_frames:
                raise DAWNInputError(_frame_count_error(name, values.shape[0], num_frames))
        return pose, blink

    def _motion_from_driving_video(self, driving_video, source: SourcePortrait, num_frames: int):
        frames, _, _, _ = read_video(driving_video, fps=VIDEO_FPS)
        track = self.face_analyzer.analyze_video(frames)
        driving_pose = np.asarray(track.pose, dtype=np.float64)
        driving_blink = np.asarray(track.eye_ratios, dtype=np.float64)
        if driving_pose.shape[0] < num_frames:
            logger.warning(
                f"The driving video has {driving_pose.shape[0]} frames but the speech needs {num_frames}; its last "
                "pose and blink are held for the remaining frames."
            )
            hold = num_frames - driving_pose.shape[0]
            driving_pose = np.concatenate([driving_pose, np.repeat(driving_pose[-1:], hold, axis=0)])
            driving_blink = np.concatenate([driving_blink, np.repeat(driving_blink[-1:], hold, axis=0)])
        driving_pose, driving_blink = driving_pose[:num_frames], driving_blink[:num_frames]
        # Cross-identity reenactment: transfer the driver's motion, not its absolute head placement or eye shape.
        pose = source.pose[None] + (driving_pose - driving_pose[:1])
        blink = source.blink[None] + (driving_blink - driving_blink[:1])
        return pose, blink

    # ------------------------------------------------------------------------------------------------------------
    # 4. Conditions → motion latents (the diffusion loop over the whole clip)
    # ------------------------------------------------------------------------------------------------------------
    def build_condition(self, speech: SpeechConditions, source: SourcePortrait, pose, blink) -> torch.Tensor:
        """Per-frame condition [audio | pose − source pose | blink − source blink], (1, F, cond_dim)."""
        audio_dim = self._audio_feature_dim()
        if audio_dim is not None and speech.features.shape[-1] != audio_dim:
            raise DAWNInputError(_audio_width_error(speech.features.shape[-1], audio_dim))
        return build_condition(
            speech.features,
            torch.as_tensor(pose),
            torch.as_tensor(blink),
            torch.as_tensor(source.pose),
            torch.as_tensor(source.blink),
        )[None]

    def _audio_feature_dim(self) -> Optional[int]:
        """Channels of the speech features the U-Net's condition holds."""
        return getattr(self.unet, "audio_dim", None)

    def prepare_latents(self, num_frames, dtype, device, generator, latents=None):
        shape = (1, 3, num_frames, self.latent_size, self.latent_size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise DAWNInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def prepare_extra_step_kwargs(self, generator, eta):
        """Keyword arguments for `scheduler.step`: only those its signature accepts (`eta` only when given)."""
        parameters = set(inspect.signature(self.scheduler.step).parameters)
        extra_step_kwargs = {}
        if "generator" in parameters:
            extra_step_kwargs["generator"] = generator
        if eta is not None and "eta" in parameters:
            extra_step_kwargs["eta"] = eta
        return extra_step_kwargs

    # ------------------------------------------------------------------------------------------------------------
    # 5. Motion latents → frames
    # ------------------------------------------------------------------------------------------------------------
    def decode_motion(self, source_features, latents: torch.Tensor, decode_chunk_size: Optional[int] = None):
        # float32 latents: the warp runs in float32, so do not round the sampling grid to the LFG's dtype first.
        grid, occlusion = self.lfg.latent_to_motion(latents.float())
        # Schedulers other than DAWN's do not clip x0, so keep the occlusion a valid blending weight.
        occlusion = occlusion.clamp(0.0, 1.0)
        return self.lfg.decode(source_features, grid, occlusion, frames_per_batch=decode_chunk_size)

    # ------------------------------------------------------------------------------------------------------------
    def check_inputs(
        self,
        num_inference_steps,
        guidance_scale,
        output_type,
        callback_on_step_end_tensor_inputs=None,
        audio=None,
        audio_features=None,
        num_speech_frames=None,
        num_frames=None,
        pose=None,
        blink=None,
        driving_video=None,
        latents=None,
        attention_kwargs=None,
    ):
        """
        Checks a call's arguments before any model runs, so that a mistake costs no face analysis, speech encoding or
        denoising. `num_speech_frames` is the length in video frames of speech given as `audio` (see
        [`load_speech`]); the number of frames is then known and every per-frame input is checked against it.
        """
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise DAWNInputError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        if guidance_scale < 1.0:
            raise DAWNInputError(f"guidance_scale must be >= 1 (1 disables guidance), got {guidance_scale}")
        if output_type not in ("np", "pil", "pt", "latent"):
            raise DAWNInputError(f"output_type must be 'np', 'pil', 'pt' or 'latent', got {output_type!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs or [] if k not in self._callback_tensor_inputs]
        if unknown:
            raise DAWNInputError(f"callback_on_step_end_tensor_inputs must be in {self._callback_tensor_inputs}, got {unknown}")
        if attention_kwargs is not None and set(attention_kwargs) - {"scale"}:
            raise DAWNInputError(
                f"attention_kwargs takes only 'scale' (the LoRA scale), got {sorted(attention_kwargs)}; DAWN's "
                "attention processors have no other options"
            )
        whole = isinstance(num_frames, (int, np.integer)) and not isinstance(num_frames, bool)
        if num_frames is not None and (not whole or num_frames < 1):
            raise DAWNInputError(f"num_frames must be a positive integer, got {num_frames!r}")

        # The number of video frames: the speech's, or fewer with `num_frames`.
        if audio_features is not None:
            shape = tuple(audio_features.shape) if hasattr(audio_features, "shape") else np.shape(audio_features)
            audio_dim = self._audio_feature_dim()
            if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
                raise DAWNInputError(f"audio_features must have shape (frames, {audio_dim or 'hidden'}), got {shape}")
            if audio_dim is not None and shape[-1] != audio_dim:
                raise DAWNInputError(_audio_width_error(shape[-1], audio_dim))
            speech_frames, speech_name = shape[-2], "audio_features hold"
        elif audio is not None:
            if self.audio_encoder is None or self.feature_extractor is None:
                raise DAWNInputError(_NO_AUDIO_ENCODER)
            speech_frames, speech_name = num_speech_frames, "audio lasts"
        else:
            raise DAWNInputError(_NO_SPEECH)
        if speech_frames is not None and speech_frames < 1:
            raise DAWNInputError("the speech is shorter than one video frame (40 ms); pass a longer clip")
        if num_frames is not None and speech_frames is not None and num_frames > speech_frames:
            raise DAWNInputError(f"num_frames={num_frames} exceeds the {speech_frames} frames the {speech_name}")
        frames = num_frames if num_frames is not None else speech_frames

        for name, values, width, model in (("pose", pose, 6, self.pbnet_pose), ("blink", blink, 2, self.pbnet_blink)):
            if values is None:
                if model is None and driving_video is None:
                    raise DAWNInputError(
                        f"this pipeline has no pbnet_{name}: pass `{name}` (one row per frame) or a `driving_video`"
                    )
                continue
            rows = _as_array(values, name, width).shape[0]
            if frames is not None and rows != frames:
                raise DAWNInputError(_frame_count_error(name, rows, frames))
        if latents is not None and frames is not None:
            shape = (1, 3, frames, self.latent_size, self.latent_size)
            if tuple(latents.shape) != shape:
                raise DAWNInputError(f"latents must have shape {shape}, got {tuple(latents.shape)}")

    @torch.no_grad()
    def __call__(
        self,
        image: Union[ImageInput, List[ImageInput]],
        audio: Optional[Union[AudioInput, List[AudioInput]]] = None,
        sampling_rate: Optional[int] = None,
        audio_features: Optional[Union[np.ndarray, torch.Tensor]] = None,
        pose: Optional[np.ndarray] = None,
        blink: Optional[np.ndarray] = None,
        driving_video: Optional[str] = None,
        face_landmarks: Optional[np.ndarray] = None,
        face_box: Optional[np.ndarray] = None,
        source_pose: Optional[np.ndarray] = None,
        source_blink: Optional[np.ndarray] = None,
        crop: Optional[str] = None,
        num_frames: Optional[int] = None,
        num_inference_steps: int = 20,
        guidance_scale: Optional[float] = None,
        eta: Optional[float] = None,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        decode_chunk_size: Optional[int] = 16,
        output_type: str = "np",
        return_dict: bool = True,
        callback_on_step_end: Optional[
            Union[Callable[[Any, int, int, Dict], Dict], PipelineCallback, MultiPipelineCallbacks]
        ] = None,
        callback_on_step_end_tensor_inputs: List[str] = ["latents"],
        attention_kwargs: Optional[Dict[str, Any]] = None,
        paste_back: Optional[bool] = None,
        feather: float = 0.1,
        color_match: bool = False,
        max_size: Optional[int] = None,
    ):
        r"""
        Generates a talking-head video for the whole speech clip in one non-autoregressive pass.

        Args:
            image (`str`, `PIL.Image.Image`, `np.ndarray` or `torch.Tensor`, or a list of them):
                The portrait: a path or an image in any mode and size. By default a face-centred square is cropped.
            audio (`str`, `np.ndarray` or `torch.Tensor`, or a list of them, *optional*):
                The speech: a path (wav, flac, mp3, m4a, or a video file's audio track) or samples, any rate and
                channel count (`sampling_rate` required for arrays). The video lasts floor(duration × 25) frames.
                Lists of images and/or speech clips make one video per pair (a single image or clip is paired with
                every entry of the other list), returned as a list of results.
            audio_features (`np.ndarray` or `torch.Tensor` of shape `(frames, hidden)`, *optional*):
                Precomputed speech features at 25 fps instead of `audio`.
            pose (`np.ndarray` of shape `(frames, 6)`, *optional*):
                Head pose per frame (yaw, pitch, roll in degrees, scale, tx, ty); sampled by `pbnet_pose` if omitted.
            blink (`np.ndarray` of shape `(frames, 2)`, *optional*):
                Eye aspect ratios per frame; sampled by `pbnet_blink` if omitted.
            driving_video (`str`, *optional*):
                A video whose head motion and blinks (relative to its first frame) drive the portrait.
            face_landmarks, face_box, source_pose, source_blink (*optional*):
                Skip (parts of) the portrait's face analysis: 68 landmarks, the box [x_min, x_max, y_min, y_max]
                (+ [H, W]) in image pixels, the pose (6,) and eye ratios (2,).
            crop (`str`, *optional*): `"face"`, `"resize"` (official) or `"none"`; defaults to the pipeline config.
            num_frames (`int`, *optional*): Render only the first `num_frames` frames.
            num_inference_steps (`int`, defaults to 20): Denoising steps.
            guidance_scale (`float`, *optional*):
                Classifier-free guidance on the speech/pose/blink condition (1.0 = off, as the official sampler);
                defaults to the pipeline config's `guidance_scale` (the model's recommendation, 1.0 unless it says).
            eta (`float`, *optional*): Passed to schedulers whose `step` takes it (DDIM-style noise level).
            generator (`torch.Generator` or a list of them, *optional*):
                Makes pose/blink sampling and denoising deterministic. With lists of inputs, one generator per pair
                makes each video independent of the others in the list.
            latents (`torch.Tensor` of shape `(1, 3, frames, L, L)`, *optional*): Initial noise.
            decode_chunk_size (`int`, *optional*, defaults to 16): Frames decoded at once (bounds memory).
            output_type (`str`, defaults to `"np"`): `"np"`, `"pil"`, `"pt"` or `"latent"`.
            return_dict (`bool`, defaults to `True`): Return a [`DAWNPipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*):
                Called after each denoising step as `callback_on_step_end(pipe, step, timestep, callback_kwargs)`
                with the tensors named in `callback_on_step_end_tensor_inputs` (for callback objects, in their
                `tensor_inputs`); may return replacements.
            callback_on_step_end_tensor_inputs (`List[str]`, defaults to `["latents"]`):
                Tensors passed to a plain callback function, from `_callback_tensor_inputs`.
            attention_kwargs (`dict`, *optional*):
                `{"scale": s}` multiplies the loaded LoRA adapters' updates by `s` for this call (0 gives the base
                model); the adapters' own scale is restored afterwards.
            paste_back (`bool`, *optional*): Full-frame output (defaults to the pipeline config): `frames[0]` is a
                [`CompositedVideo`] at the photo's resolution, composited chunk by chunk when read; needs
                `crop="face"` and `output_type="np"`.
            feather (`float`, defaults to 0.1): Paste-back soft edge width, as a fraction of the crop box side.
            color_match (`bool`, defaults to `False`): Paste-back: match each crop's colours to the photo at the box.
            max_size (`int`, *optional*): Paste-back: scale the photo down so its long side is at most this.

        Returns:
            [`DAWNPipelineOutput`] or `tuple` `(frames, pose, blink, fps, audio)`; a list of them for lists of inputs.
        """
        if isinstance(image, (list, tuple)) or isinstance(audio, (list, tuple)):
            per_video = dict(
                audio_features=audio_features, pose=pose, blink=blink, latents=latents, face_landmarks=face_landmarks,
                face_box=face_box, source_pose=source_pose, source_blink=source_blink,
            )  # fmt: skip
            given = sorted(name for name, value in per_video.items() if value is not None)
            if given:
                raise DAWNInputError(
                    f"{', '.join(given)} describe a single video; with lists of images or audio, call the pipeline "
                    "once per video to pass them"
                )
            shared = dict(
                sampling_rate=sampling_rate, driving_video=driving_video, crop=crop, num_frames=num_frames,
                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                decode_chunk_size=decode_chunk_size, output_type=output_type, return_dict=return_dict,
                callback_on_step_end=callback_on_step_end, attention_kwargs=attention_kwargs,
                callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, paste_back=paste_back,
                feather=feather, color_match=color_match, max_size=max_size,
            )  # fmt: skip
            return [
                self(image=item_image, audio=item_audio, generator=item_generator, **shared)
                for item_image, item_audio, item_generator in _pair_inputs(image, audio, generator)
            ]

        if guidance_scale is None:
            guidance_scale = self.config.guidance_scale
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        # Speech given as audio is decoded first (no model runs) so that its length can be checked against the
        # per-frame inputs before any heavy work.
        waveform = None
        if audio_features is None and audio is not None and self.audio_encoder is not None:
            waveform = self.load_speech(audio, sampling_rate)
        self.check_inputs(
            num_inference_steps,
            guidance_scale,
            output_type,
            callback_on_step_end_tensor_inputs,
            audio=audio,
            audio_features=audio_features,
            num_speech_frames=None if waveform is None else num_video_frames(len(waveform)),
            num_frames=num_frames,
            pose=pose,
            blink=blink,
            driving_video=driving_video,
            latents=latents,
            attention_kwargs=attention_kwargs,
        )
        if isinstance(generator, list):
            if len(generator) != 1:
                raise DAWNInputError(
                    f"got {len(generator)} generators for one video; pass one generator, or lists of images/audio"
                )
            generator = generator[0]
        paste_back = self.config.paste_back if paste_back is None else paste_back
        if paste_back and ((crop or self.config.crop) != "face" or output_type != "np"):
            raise DAWNInputError(
                "paste_back needs crop='face' (the crop's box in the photo) and output_type='np'; got "
                f"crop={crop or self.config.crop!r}, output_type={output_type!r}"
            )
        self._guidance_scale = guidance_scale
        self._attention_kwargs = attention_kwargs
        self._interrupt = False
        device = self._execution_device

        # 1-3: conditions, in the order data flows: portrait, speech, then motion.
        source = self.prepare_source(image, face_landmarks, face_box, source_pose, source_blink, crop)
        if waveform is not None:
            speech = self.encode_waveform(waveform, num_frames)
        else:
            speech = self.encode_speech(audio_features=audio_features, num_frames=num_frames)
        frame_count = speech.features.shape[0]
        pose, blink = self.prepare_pose_and_blink(source, speech, pose, blink, driving_video, generator)
        encoder_hidden_states = self.build_condition(speech, source, pose, blink).to(device)

        source_features = self.lfg.encode(source.image.to(device=device, dtype=self.lfg.dtype))
        source_latent = source_features.latent
        mask = face_mask(source.face_box, self.config.resolution).to(device)

        # 4: denoise the motion latents of every frame together.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        # The loop runs in float32 whatever the U-Net precision: the sampler's arithmetic is cheap and exact.
        latents = self.prepare_latents(frame_count, torch.float32, device, generator, latents)
        extra_step_kwargs = self.prepare_extra_step_kwargs(generator, eta)
        unet_dtype = self.unet.dtype
        batch = 2 if self.do_classifier_free_guidance else 1

        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    continue
                # Built each step: a callback may replace `encoder_hidden_states`. The unconditional branch of
                # guidance is the all-zero condition the U-Net was trained with as its null condition.
                if self.do_classifier_free_guidance:
                    condition_batch = torch.cat([torch.zeros_like(encoder_hidden_states), encoder_hidden_states])
                else:
                    condition_batch = encoder_hidden_states
                model_input = self.scheduler.scale_model_input(latents, t)
                model_input = model_input.expand(batch, -1, -1, -1, -1)
                if torch.is_tensor(t):
                    timestep = t.to(device).reshape(1).expand(batch)
                else:
                    timestep = torch.full((batch,), t, device=device)
                noise_pred = self.unet(
                    model_input.to(unet_dtype),
                    timestep,
                    encoder_hidden_states=condition_batch.to(unet_dtype),
                    source_latent=source_latent.to(unet_dtype).expand(batch, -1, -1, -1),
                    face_mask=mask.to(unet_dtype).expand(batch, -1, -1, -1),
                    attention_kwargs=self.attention_kwargs,
                ).sample.float()
                if self.do_classifier_free_guidance:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra_step_kwargs).prev_sample

                if callback_on_step_end is not None:
                    step_tensors = {"latents": latents, "encoder_hidden_states": encoder_hidden_states}
                    callback_kwargs = {name: step_tensors[name] for name in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs) or {}
                    latents = callback_outputs.pop("latents", latents)
                    encoder_hidden_states = callback_outputs.pop("encoder_hidden_states", encoder_hidden_states)
                progress_bar.update()

        # 5: render.
        if output_type == "latent":
            video = latents
        else:
            frames = self.decode_motion(source_features, latents, decode_chunk_size).float().clamp(0, 1)
            video = _postprocess_video(frames, output_type)
        crops = video if output_type == "np" else None
        if paste_back:
            # Full-size frames are made only when read (chunk by chunk), so memory stays that of the crops.
            compositor = FrameCompositor.from_photo(
                source.photo,
                source.crop_transform,
                source.image[0].permute(1, 2, 0).numpy(),
                feather=feather,
                color_match=color_match,
                max_size=max_size,
            )
            video = [CompositedVideo(crops[0], compositor)]

        self.maybe_free_model_hooks()
        outputs = (video, pose.astype(np.float32), blink.astype(np.float32), float(VIDEO_FPS), speech.waveform)
        if not return_dict:
            return outputs
        return DAWNPipelineOutput(
            *outputs,
            audio_sampling_rate=AUDIO_SAMPLING_RATE,
            crops=crops,
            crop_box=source.crop_transform,
            photo=source.photo,
        )


_NO_SPEECH = "pass the speech as `audio` (path, array or tensor) or precomputed `audio_features`"
_NO_AUDIO_ENCODER = (
    "this pipeline has no audio_encoder/feature_extractor: pass precomputed `audio_features`, or load the pipeline "
    "with a HuBERT (audio_encoder=HubertModel..., feature_extractor=...)"
)


def _audio_width_error(width: int, audio_dim: int) -> str:
    return (
        f"the audio features have {width} channels but the U-Net expects {audio_dim}; use the audio encoder the "
        "model was trained with"
    )


def _frame_count_error(name: str, rows: int, frames: int) -> str:
    return (
        f"{name} has {rows} frames but the speech lasts {frames} frames ({frames / VIDEO_FPS:.2f} s at {VIDEO_FPS} "
        "fps); pass one row per video frame"
    )


def _pair_inputs(images, audios, generators):
    """(image, audio, generator) per video from lists (a single image, clip or generator serves every video)."""
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    audios = list(audios) if isinstance(audios, (list, tuple)) else [audios]
    count = max(len(images), len(audios))
    if len(images) not in (1, count) or len(audios) not in (1, count):
        raise DAWNInputError(f"got {len(images)} images and {len(audios)} audio clips; pass equal numbers (or one)")
    if isinstance(generators, (list, tuple)):
        if len(generators) != count:
            raise DAWNInputError(f"got {len(generators)} generators for {count} videos; pass one per video")
    else:
        generators = [generators] * count
    return [(images[i % len(images)], audios[i % len(audios)], generators[i]) for i in range(count)]


def _as_array(values, name: str, width: int) -> np.ndarray:
    values = values.detach().float().cpu().numpy() if torch.is_tensor(values) else np.asarray(values, dtype=np.float64)
    values = values.astype(np.float64)
    if values.ndim == 3 and values.shape[0] == 1:
        values = values[0]
    if values.ndim != 2 or values.shape[1] != width:
        raise DAWNInputError(f"{name} must have shape (frames, {width}), got {tuple(values.shape)}")
    if not np.isfinite(values).all():
        raise DAWNInputError(f"{name} contains NaN or infinite values")
    return values


def _postprocess_video(frames: torch.Tensor, output_type: str):
    """(B, F, 3, H, W) in [0, 1] → the requested output type."""
    if output_type == "pt":
        return frames
    array = frames.permute(0, 1, 3, 4, 2).cpu().numpy()
    if output_type == "np":
        return array
    # Truncation to uint8, as the official writer does.
    return [[PIL.Image.fromarray((frame * 255).astype(np.uint8)) for frame in video] for video in array]
