"""
The lip-sync benchmark's measurements (`diffusers_dawn.testing.measures`), checked on ground-truth frames whose mouth
opening and blinks are known.
"""

import numpy as np
import pytest

from diffusers_dawn.processing.face import FaceAnalyzer
from diffusers_dawn.testing import measures
from diffusers_dawn.testing.synthetic import generate_synthetic_clip


def test_measures_recover_the_rendered_mouth_and_blinks():
    analyzer = FaceAnalyzer(backend="mediapipe")
    clip = generate_synthetic_clip(100001, num_frames=100, resolution=128)
    rows = measures.measure(analyzer, clip.frames)
    assert not np.isnan(rows).any()
    assert np.corrcoef(rows[:, 0], clip.mouth_opening)[0, 1] > 0.9
    per_minute = measures.blinks_per_minute(rows[:, 1], clip.fps)
    assert per_minute * (len(clip.frames) / clip.fps / 60) == pytest.approx(len(clip.blink_onsets))
    assert len(clip.blink_onsets) == 2  # the clip really blinks, so the count above is not vacuous


def test_blink_counting_counts_onsets():
    def count(ratios):
        ratios = np.asarray(ratios, dtype=float)
        return round(measures.blinks_per_minute(ratios, 25.0) * len(ratios) / 25.0 / 60)

    assert count([0.3, 0.3, 0.1, 0.1, 0.3, 0.3, 0.1, 0.3]) == 2
    assert count([0.3] * 8) == 0
    assert count([0.1, 0.3, 0.3, 0.3, np.nan, 0.3]) == 1  # a blink at the start counts; no face is not a blink


def test_pooled_correlation_centres_each_clip_and_skips_unmeasured_frames():
    def rows(values):
        return np.asarray([[value] + [0.0] * 4 for value in values], dtype=float)

    # Two clips at different resting openings moving alike: centring each clip makes the pooled series agree.
    truth = [rows([0.1, 0.2, 0.1, 0.2]), rows([0.5, 0.6, 0.5, 0.6])]
    produced = [rows([0.3, 0.4, np.nan, 0.4]), rows([0.0, 0.1, 0.0, 0.1])]
    correlation, measured = measures.pooled_correlation(truth, produced)
    assert measured == 7 and correlation > 0.95  # not 1: the unmeasured frame shifts clip 1's centre
    # Opposite movement correlates negatively; fewer than three measurable frames score 0.
    assert measures.pooled_correlation(truth, [rows([0.2, 0.1, 0.2, 0.1])] * 2)[0] < -0.99
    assert measures.pooled_correlation(truth[:1], [rows([0.1, np.nan, np.nan, np.nan])]) == (0.0, 1)
    # The eye column is read alone: eyes that follow the truth while the mouth does not.
    eyes_truth = [np.roll(clip, 1, axis=1) for clip in truth]
    eyes_produced = [np.roll(clip, 1, axis=1) for clip in produced]
    assert measures.pooled_correlation(eyes_truth, eyes_produced, measures.EYE) == (correlation, measured)
    assert measures.pooled_correlation(eyes_truth, eyes_produced)[0] == 0.0  # the mouth column is constant there
