"""
Procedural talking faces with known ground truth, for tests and benchmarks.

A clip is made in four independent, seeded parts:

1. [`synthesize_speech`]: speech-like audio in numpy — phrases of syllables (voiced harmonic segments shaped by
   vowel formants, with a falling pitch contour and jitter, a little breath noise) separated by pauses.
2. [`sample_face_motion`]: per-frame ground truth — mouth opening following the speech envelope with a short lag,
   eye blinks at natural rates (15–20 per minute, 150–250 ms each), head rotation and translation from a smooth
   random process whose amplitude grows with speech energy (speakers nod and turn more while talking).
3. [`sample_face_style`]: the look — skin, hair, lip, iris and background colours, face width / length, eye and
   mouth size, hair volume.
4. [`render_face`]: a 68-point 3-D face (iBUG layout) posed and projected, drawn with PIL (supersampled). The
   landmarks returned are exactly the drawn ones, so face analysis given these landmarks recovers the pose.

[`generate_synthetic_clip`] runs all four; [`write_synthetic_dataset`] writes MP4 (H.264 + AAC) files with a `.npz`
of ground truth next to each (its `landmarks` array feeds `training/preprocess.py --landmarks sidecar`).
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import PIL.Image
import PIL.ImageDraw

from ..processing.audio import AUDIO_SAMPLING_RATE as SAMPLING_RATE
from ..processing.audio import SAMPLES_PER_FRAME
from ..processing.audio import VIDEO_FPS as FPS
from ..processing.face import LIP_POINTS, bounding_box, eye_aspect_ratios, rotation_from_euler


SUPERSAMPLING = 3

# Vowel formants (F1, F2, F3 in Hz) of an average adult voice, for the syllable nuclei.
VOWEL_FORMANTS = np.array(
    [[730, 1090, 2440], [270, 2290, 3010], [530, 1840, 2480], [570, 840, 2410], [300, 870, 2240], [660, 1720, 2410]]
)
FORMANT_BANDWIDTHS = np.array([90.0, 110.0, 170.0])


# ----------------------------------------------------------------------------------------------------------------
# Audio
# ----------------------------------------------------------------------------------------------------------------
def synthesize_speech(rng: np.random.Generator, num_samples: int, sampling_rate: int = SAMPLING_RATE) -> np.ndarray:
    """
    Speech-like float32 audio in [-1, 1]: phrases of 2–8 syllables (each 120–260 ms of voiced sound with vowel
    formants, pitch 90–220 Hz falling over the phrase) separated by 150–700 ms pauses, plus faint background noise.
    """
    amplitude = np.zeros(num_samples)
    pitch = np.full(num_samples, 120.0)
    formants = np.zeros((num_samples, 3))
    formants[:] = VOWEL_FORMANTS[0]
    speaker_pitch = rng.uniform(90, 220)
    position = int(rng.uniform(0.0, 0.3) * sampling_rate)
    while position < num_samples:
        num_syllables = int(rng.integers(2, 9))
        phrase_start = position
        for syllable in range(num_syllables):
            length = int(rng.uniform(0.12, 0.26) * sampling_rate)
            end = min(position + length, num_samples)
            if end <= position:
                break
            local = np.linspace(0, 1, end - position, endpoint=False)
            # Raised-cosine-like syllable envelope with a quicker attack than release, random loudness (stress).
            shape = np.sin(np.pi * local ** 0.7) ** 1.5
            amplitude[position:end] = np.maximum(amplitude[position:end], rng.uniform(0.35, 1.0) * shape)
            progress = (position - phrase_start) / max(1, num_syllables * 0.19 * sampling_rate)
            pitch[position:end] = speaker_pitch * (1.15 - 0.3 * progress) * (1 + 0.08 * np.sin(2 * np.pi * local))
            formants[position:end] = VOWEL_FORMANTS[rng.integers(len(VOWEL_FORMANTS))] * rng.uniform(0.9, 1.1)
            gap = int(rng.uniform(0.0, 0.06) * sampling_rate)  # consonant closure between syllables
            position = end + gap
        position += int(rng.uniform(0.15, 0.7) * sampling_rate)

    jitter = 1 + 0.01 * np.convolve(rng.standard_normal(num_samples), np.ones(200) / 200, mode="same")
    phase = 2 * np.pi * np.cumsum(pitch * jitter) / sampling_rate
    voiced = np.zeros(num_samples)
    for harmonic in range(1, 40):
        frequency = harmonic * pitch
        # Source spectrum falls ~12 dB/octave; the vocal tract adds resonances at the formants.
        gain = harmonic ** -1.0 * sum(
            1.0 / (1.0 + ((frequency - formants[:, k]) / FORMANT_BANDWIDTHS[k]) ** 2) for k in range(3)
        )
        gain[frequency > sampling_rate / 2 - 200] = 0.0
        voiced += gain * np.sin(harmonic * phase)
    voiced /= np.abs(voiced).max() + 1e-9
    breath = 0.05 * rng.standard_normal(num_samples) * amplitude
    waveform = amplitude * voiced + breath + 0.002 * rng.standard_normal(num_samples)
    return (0.8 * waveform / (np.abs(waveform).max() + 1e-9)).astype(np.float32)


def speech_envelope(waveform: np.ndarray, num_frames: int, samples_per_frame: int = SAMPLES_PER_FRAME) -> np.ndarray:
    """Per-video-frame RMS of the audio, (num_frames,), zero-padded past the end of the audio."""
    padded = np.zeros(num_frames * samples_per_frame, dtype=np.float64)
    usable = min(len(waveform), len(padded))
    padded[:usable] = waveform[:usable]
    return np.sqrt((padded.reshape(num_frames, samples_per_frame) ** 2).mean(1))


# ----------------------------------------------------------------------------------------------------------------
# Motion ground truth
# ----------------------------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, num_frames: int, cutoff_frames: float) -> np.ndarray:
    """Unit-variance noise low-passed with a Gaussian of `cutoff_frames` standard deviation."""
    pad = int(4 * cutoff_frames) + 1
    noise = rng.standard_normal(num_frames + 2 * pad)
    kernel = np.exp(-0.5 * (np.arange(-pad, pad + 1) / cutoff_frames) ** 2)
    kernel /= kernel.sum()
    # Divide by the process's theoretical standard deviation (not the sample's: short clips would be inflated).
    return np.convolve(noise, kernel, mode="same")[pad:-pad] / np.sqrt((kernel**2).sum())


def _blink_track(rng: np.random.Generator, num_frames: int, fps: float):
    """Eye openness in [0, 1] per frame and blink onsets: a renewal process at 15–20 blinks per minute."""
    rate_per_second = rng.uniform(15, 20) / 60
    openness = np.ones(num_frames)
    onsets = []
    time = rng.exponential(1 / rate_per_second) * 0.5
    duration_total = num_frames / fps
    while time < duration_total:
        duration = rng.uniform(0.15, 0.25)
        onsets.append(time)
        # Fast closing (40%) then slower opening (60%), evaluated at frame times.
        frame_times = np.arange(num_frames) / fps
        phase = (frame_times - time) / duration
        closing = (phase >= 0) & (phase < 0.4)
        opening = (phase >= 0.4) & (phase < 1.0)
        closure = np.zeros(num_frames)
        closure[closing] = phase[closing] / 0.4
        closure[opening] = 1 - (phase[opening] - 0.4) / 0.6
        openness = np.minimum(openness, 1 - closure)
        # A refractory second between blinks keeps the rate natural (no double blinks from the exponential tail).
        time += duration + 1.0 + rng.exponential(max(1 / rate_per_second - 1.0 - duration, 0.05))
    return openness, np.array(onsets)


def sample_face_motion(
    rng: np.random.Generator,
    envelope: np.ndarray,
    fps: float = FPS,
    mouth_lag_frames: int = 1,
) -> Dict[str, np.ndarray]:
    """
    Per-frame ground truth driven by the speech envelope.

    Returns a dict of arrays over frames: `mouth_opening` in [0, 1] (the envelope, normalised, smoothed over ~3
    frames and delayed by `mouth_lag_frames`), `eye_openness` in [0, 1], `blink` (bool, eyes more than half closed),
    `blink_onsets` (seconds), `rotation` (F, 3) yaw / pitch / roll in degrees, `translation` (F, 2) in units of the
    face size, `speech_energy` in [0, 1].
    """
    num_frames = len(envelope)
    reference = np.percentile(envelope, 95) if np.any(envelope > 0) else 1.0
    energy = np.clip(envelope / (reference + 1e-9), 0, 1)
    kernel = np.array([0.25, 0.5, 0.25])
    smoothed = np.convolve(np.pad(energy, 1, mode="edge"), kernel, mode="valid")
    mouth = np.concatenate([np.full(mouth_lag_frames, smoothed[0]), smoothed])[:num_frames]
    mouth = np.clip(mouth, 0, 1)

    openness, onsets = _blink_track(rng, num_frames, fps)

    # Speech energy over ~0.5 s modulates how much the head moves; the nod follows the envelope over ~0.3 s.
    slow_energy = np.convolve(np.pad(energy, 6, mode="edge"), np.ones(13) / 13, mode="valid")
    activity = 0.3 + 1.4 * slow_energy
    yaw = rng.uniform(6, 14) * _smooth_noise(rng, num_frames, 0.9 * fps) * activity
    pitch = rng.uniform(3, 7) * _smooth_noise(rng, num_frames, 0.7 * fps) * activity + 6.0 * (slow_energy - slow_energy.mean())
    roll = rng.uniform(2, 5) * _smooth_noise(rng, num_frames, 1.2 * fps) * activity
    translation = np.stack(
        [0.04 * _smooth_noise(rng, num_frames, 1.5 * fps) + 0.002 * yaw,
         0.03 * _smooth_noise(rng, num_frames, 1.5 * fps) - 0.002 * pitch],
        axis=1,
    )
    return {
        "mouth_opening": mouth,
        "eye_openness": openness,
        "blink": openness < 0.5,
        "blink_onsets": onsets,
        "rotation": np.stack([yaw, pitch, roll], axis=1),
        "translation": translation,
        "speech_energy": energy,
    }


# ----------------------------------------------------------------------------------------------------------------
# Appearance and geometry
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SyntheticFaceStyle:
    """Colours (RGB 0–255) and proportions of one drawn person."""

    skin: tuple
    hair: tuple
    lips: tuple
    iris: tuple
    background: tuple
    background_accent: tuple
    face_width: float  # jaw half-width in template units (the eyes sit at ±25)
    face_length: float  # chin depth below the mouth line
    eye_width: float  # half-width of each eye
    eye_ratio: float  # open-eye height / width
    mouth_width: float  # half-width of the mouth
    hair_volume: float  # hair ellipse size relative to the head
    face_scale: float  # face height / frame height


def sample_face_style(rng: np.random.Generator) -> SyntheticFaceStyle:
    """A random look: skin tones from light to dark, natural hair colours, varied backgrounds and proportions."""
    skin_tones = np.array([[255, 224, 196], [241, 194, 150], [224, 172, 125], [198, 134, 86], [141, 85, 54], [94, 58, 38]])
    hair_tones = np.array([[20, 15, 12], [60, 40, 25], [120, 80, 40], [200, 160, 90], [150, 60, 30], [130, 130, 130]])
    index = rng.integers(len(skin_tones))
    skin = np.clip(skin_tones[index] + rng.integers(-12, 13, 3), 0, 255)
    hair = np.clip(hair_tones[rng.integers(len(hair_tones))] + rng.integers(-10, 11, 3), 0, 255)
    lips = np.clip(skin * np.array([0.85, 0.55, 0.55]) + rng.integers(-10, 11, 3), 0, 255)
    background = rng.integers(30, 230, 3)
    accent = np.clip(background + rng.integers(-50, 51, 3), 0, 255)
    iris = rng.choice(np.array([[60, 40, 20], [40, 80, 140], [70, 110, 60], [30, 25, 20]]))
    return SyntheticFaceStyle(
        skin=tuple(int(v) for v in skin),
        hair=tuple(int(v) for v in hair),
        lips=tuple(int(v) for v in lips),
        iris=tuple(int(v) for v in iris),
        background=tuple(int(v) for v in background),
        background_accent=tuple(int(v) for v in accent),
        face_width=float(rng.uniform(52, 66)),
        face_length=float(rng.uniform(40, 58)),
        eye_width=float(rng.uniform(9, 12)),
        eye_ratio=float(rng.uniform(0.28, 0.38)),
        mouth_width=float(rng.uniform(16, 24)),
        hair_volume=float(rng.uniform(1.0, 1.25)),
        # Framed tightly, as a face crop is: at 64 px the parted lips then span several pixels, not one.
        face_scale=float(rng.uniform(0.7, 0.8)),
    )


def face_template(style: SyntheticFaceStyle, mouth_opening: float, eye_openness: float) -> np.ndarray:
    """
    The (68, 3) iBUG face in template units (x right, y down, z away from the camera; eyes at y = −25, mouth at
    y = 25 and 10 units in front of the eyes: the depth ratio the pose estimate assumes).
    """
    points = np.zeros((68, 3))
    jaw_angle = np.linspace(-np.pi * 0.47, np.pi * 0.47, 17)
    points[0:17] = np.stack(
        [style.face_width * np.sin(jaw_angle),
         (style.face_length + 25) * np.cos(jaw_angle) - 5,
         25 * np.abs(np.sin(jaw_angle))],
        axis=1,
    )
    points[17:22] = [[-42 + 8 * i, -40 - 3 * np.sin(np.pi * i / 4), -5] for i in range(5)]
    points[22:27] = [[10 + 8 * i, -40 - 3 * np.sin(np.pi * i / 4), -5] for i in range(5)]
    points[27:31] = [[0, -30 + 9 * i, -10 - 4 * i] for i in range(4)]
    points[31:36] = [[-10 + 5 * i, 5 + abs(2 - i), -14 + abs(2 - i)] for i in range(5)]
    half_height = style.eye_width * style.eye_ratio * max(eye_openness, 0.04)
    for start, centre in ((36, -25.0), (42, 25.0)):
        w = style.eye_width
        xs = [-w, -w / 3, w / 3, w, w / 3, -w / 3]
        ys = [0, -half_height, -half_height, 0, half_height, half_height]
        points[start : start + 6] = [[centre + x, -25 + y, 0] for x, y in zip(xs, ys)]
    # The lips part symmetrically about y = 25 so the mouth centre (used for the head frame) stays put.
    gap = 14.0 * mouth_opening
    w = style.mouth_width
    outer_angles = np.linspace(np.pi, -np.pi, 13)[:-1]  # 48 = left corner, clockwise through the upper lip
    points[48:60] = [[w * np.cos(angle), 25 - (6 + gap / 2) * np.sin(angle), -10] for angle in outer_angles]
    inner_angles = np.linspace(np.pi, -np.pi, 9)[:-1]
    points[60:68] = [[0.7 * w * np.cos(angle), 25 - (0.5 + gap / 2) * np.sin(angle), -10] for angle in inner_angles]
    return points


def pose_points(points: np.ndarray, rotation_degrees, scale: float, centre) -> np.ndarray:
    """Rotates template points (yaw, pitch, roll in the official convention), scales and places them (image pixels)."""
    flip = np.diag([1.0, -1.0, -1.0])  # image frame (y down, z away) <-> y-up camera frame
    rotation = flip @ rotation_from_euler(*rotation_degrees) @ flip
    return (points @ rotation.T) * scale + np.array([centre[0], centre[1], 0.0])


def _forehead_points(style: SyntheticFaceStyle) -> np.ndarray:
    """Upper head outline (template units) closing the jaw line over the forehead."""
    angles = np.linspace(np.pi * 0.03, np.pi * 0.97, 15)
    return np.stack(
        [style.face_width * np.cos(angles), -5 - (style.face_width * 1.15) * np.sin(angles), 20 * np.abs(np.cos(angles))],
        axis=1,
    )


def render_face(
    style: SyntheticFaceStyle,
    resolution: int,
    mouth_opening: float,
    eye_openness: float,
    rotation_degrees,
    translation,
):
    """
    Draws one frame. Returns (RGB uint8 (resolution, resolution, 3), landmarks (68, 3) in pixels, face outline
    points (N, 3) in pixels: jaw plus forehead, whose bounding box is the face box).
    """
    size = resolution * SUPERSAMPLING
    # Template height: forehead top (-5 - 1.15 · face_width) to chin (face_length + 20).
    scale = style.face_scale * size / (style.face_length + 25 + 1.15 * style.face_width)
    centre = (size * (0.5 + translation[0]), size * (0.5 + translation[1]))
    template = face_template(style, mouth_opening, eye_openness)
    landmarks = pose_points(template, rotation_degrees, scale, centre)
    outline = pose_points(np.concatenate([template[0:17], _forehead_points(style)]), rotation_degrees, scale, centre)

    image = PIL.Image.new("RGB", (size, size), style.background)
    draw = PIL.ImageDraw.Draw(image)
    for stripe in range(0, size, max(2, size // 6)):  # a soft striped background gives the flow something to see
        draw.rectangle([stripe, 0, stripe + size // 24, size], fill=style.background_accent)
    head_centre = outline[:, :2].mean(0)
    hair_radius = np.ptp(outline[:, 0]) * 0.62 * style.hair_volume
    draw.ellipse(
        [head_centre[0] - hair_radius, head_centre[1] - hair_radius * 1.25,
         head_centre[0] + hair_radius, head_centre[1] + hair_radius * 0.6],
        fill=style.hair,
    )
    neck_width = np.ptp(outline[:, 0]) * 0.22
    chin = landmarks[8, :2]
    draw.rectangle([chin[0] - neck_width, chin[1] - 10 * scale, chin[0] + neck_width, size],
                   fill=tuple(int(0.85 * c) for c in style.skin))
    draw.polygon([tuple(p) for p in outline[:, :2]], fill=style.skin)
    brow = tuple(int(0.8 * c) for c in style.hair)
    for start in (17, 22):
        draw.line([tuple(p) for p in landmarks[start : start + 5, :2]], fill=brow, width=max(1, int(2.5 * scale)))
    for start in (36, 42):
        eye = landmarks[start : start + 6, :2]
        draw.polygon([tuple(p) for p in eye], fill=(245, 245, 245))
        centre_eye = eye.mean(0)
        opening = np.linalg.norm(eye[1] - eye[5])
        radius = min(style.eye_width * 0.45 * scale, opening / 2)
        if radius > 0.5:
            draw.ellipse([centre_eye[0] - radius, centre_eye[1] - radius, centre_eye[0] + radius, centre_eye[1] + radius],
                         fill=style.iris)
        draw.line([tuple(p) for p in np.concatenate([eye, eye[:1]])], fill=tuple(int(0.5 * c) for c in style.skin),
                  width=max(1, int(scale)))
    nose_shadow = tuple(int(0.8 * c) for c in style.skin)
    draw.line([tuple(p) for p in landmarks[27:31, :2]], fill=nose_shadow, width=max(1, int(1.5 * scale)))
    draw.polygon([tuple(p) for p in landmarks[31:36, :2]] + [tuple(landmarks[30, :2])], fill=nose_shadow)
    draw.polygon([tuple(p) for p in landmarks[48:60, :2]], fill=style.lips)
    if mouth_opening > 0.02:
        draw.polygon([tuple(p) for p in landmarks[60:68, :2]], fill=(60, 20, 25))
    frame = np.asarray(image.resize((resolution, resolution), PIL.Image.LANCZOS))
    factor = 1.0 / SUPERSAMPLING
    # Pixel coordinates with the Pillow convention (pixel centres at +0.5) scale directly with the image.
    return frame, landmarks * factor, outline * factor


# ----------------------------------------------------------------------------------------------------------------
# Clips and datasets
# ----------------------------------------------------------------------------------------------------------------
@dataclass
class SyntheticClip:
    r"""
    A procedurally generated talking face with its ground truth (arrays over frames at `fps`).

    Args:
        frames (`np.ndarray` (F, S, S, 3) uint8): The video.
        audio (`np.ndarray` (F · 640,) float32): 16 kHz speech, exactly as long as the video.
        sampling_rate (`int`), fps (`float`): 16000 and 25.
        mouth_opening (`np.ndarray` (F,)): Lip separation in [0, 1] (speech envelope, smoothed, 1-frame lag).
        speech_energy (`np.ndarray` (F,)): Normalised per-frame RMS of the audio.
        rotation (`np.ndarray` (F, 3)): yaw, pitch, roll in degrees (official convention).
        translation (`np.ndarray` (F, 2)): Head offset from the frame centre, in frame widths.
        blink (`np.ndarray` (F,) bool): Eyes more than half closed.
        blink_onsets (`np.ndarray`): Blink start times in seconds.
        eye_openness (`np.ndarray` (F,)): 1 open, 0 closed.
        eye_ratios (`np.ndarray` (F, 2)): left, right eye aspect ratios of the drawn landmarks.
        landmarks (`np.ndarray` (F, 68, 3)): The drawn iBUG landmarks in frame pixels (z in the same scale).
        face_box (`np.ndarray` (F, 4)): [x_min, x_max, y_min, y_max] of the drawn face (forehead to chin).
        lip_box (`np.ndarray` (F, 4)): [x_min, x_max, y_min, y_max] of the lip landmarks.
        style (`SyntheticFaceStyle`): The look.
    """

    frames: np.ndarray
    audio: np.ndarray
    sampling_rate: int
    fps: float
    mouth_opening: np.ndarray
    speech_energy: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    blink: np.ndarray
    blink_onsets: np.ndarray
    eye_openness: np.ndarray
    eye_ratios: np.ndarray
    landmarks: np.ndarray
    face_box: np.ndarray
    lip_box: np.ndarray
    style: SyntheticFaceStyle

    def ground_truth(self) -> Dict[str, np.ndarray]:
        """The per-frame ground truth as arrays (what [`write_synthetic_dataset`] stores in the `.npz`)."""
        names = ("mouth_opening", "speech_energy", "rotation", "translation", "blink", "blink_onsets", "eye_openness",
                 "eye_ratios", "landmarks", "face_box", "lip_box")
        return {name: np.asarray(getattr(self, name)) for name in names}


def generate_synthetic_clip(
    seed: int,
    num_frames: int = 50,
    resolution: int = 128,
    style: Optional[SyntheticFaceStyle] = None,
    mouth_lag_frames: int = 1,
) -> SyntheticClip:
    """
    Generates a talking face: speech, motion driven by it, a random (or given) look, rendered at 25 fps.

    Args:
        seed: Everything (audio, motion, look) follows from it: the same seed gives the same clip.
        num_frames: Length in frames at 25 fps.
        resolution: Side of the square frames in pixels.
        style: The look; drawn from the seed when `None`.
        mouth_lag_frames: Frames by which the mouth follows the speech envelope.
    """
    if num_frames < 1 or resolution < 16:
        raise ValueError(f"need num_frames >= 1 and resolution >= 16, got {num_frames} and {resolution}")
    audio_rng, motion_rng, style_rng = (np.random.default_rng([seed, part]) for part in range(3))
    audio = synthesize_speech(audio_rng, num_frames * SAMPLES_PER_FRAME)
    motion = sample_face_motion(motion_rng, speech_envelope(audio, num_frames), mouth_lag_frames=mouth_lag_frames)
    style = style or sample_face_style(style_rng)
    frames, landmarks, outlines = [], [], []
    for index in range(num_frames):
        frame, points, outline = render_face(
            style,
            resolution,
            motion["mouth_opening"][index],
            motion["eye_openness"][index],
            motion["rotation"][index],
            motion["translation"][index],
        )
        frames.append(frame)
        landmarks.append(points)
        outlines.append(outline)
    landmarks = np.stack(landmarks)
    return SyntheticClip(
        frames=np.stack(frames),
        audio=audio,
        sampling_rate=SAMPLING_RATE,
        fps=float(FPS),
        mouth_opening=motion["mouth_opening"],
        speech_energy=motion["speech_energy"],
        rotation=motion["rotation"],
        translation=motion["translation"],
        blink=motion["blink"],
        blink_onsets=motion["blink_onsets"],
        eye_openness=motion["eye_openness"],
        eye_ratios=np.stack([eye_aspect_ratios(points) for points in landmarks]),
        landmarks=landmarks,
        face_box=np.stack([bounding_box(outline) for outline in outlines]),
        lip_box=np.stack([bounding_box(points[LIP_POINTS]) for points in landmarks]),
        style=style,
    )


def write_synthetic_dataset(
    output_dir: Union[str, os.PathLike],
    num_videos: int,
    num_frames: int = 100,
    resolution: int = 128,
    seed: int = 0,
) -> List[Path]:
    """
    Writes `num_videos` synthetic talking-face videos `video_XXXX.mp4` (H.264 + AAC, 25 fps) with their ground
    truth in `video_XXXX.npz` (arrays of [`SyntheticClip.ground_truth`]; `landmarks` is what
    `training/preprocess.py --landmarks sidecar` reads) and the look in `video_XXXX.json`. Video `i` uses seed
    `seed + i`. Returns the video paths.
    """
    from ..processing.video import export_to_video_with_audio

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_videos):
        clip = generate_synthetic_clip(seed + index, num_frames=num_frames, resolution=resolution)
        path = output_dir / f"video_{index:04d}.mp4"
        export_to_video_with_audio(clip.frames, path, fps=clip.fps, audio=clip.audio, audio_sampling_rate=clip.sampling_rate)
        np.savez_compressed(path.with_suffix(".npz"), **clip.ground_truth())
        path.with_suffix(".json").write_text(json.dumps({"seed": seed + index, "style": asdict(clip.style)}, indent=2))
        paths.append(path)
    return paths
