"""ODF2NNA moments, the comparison baselines (L1, random, APoZ) and the criterion registry."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.errors import DataError, ParameterError
from onnxprune.importance import (
    CRITERIA,
    OCNNA,
    ODF2NNA,
    APoZ,
    ChannelAccumulator,
    L1Magnitude,
    RandomImportance,
    get_criterion,
)
from onnxprune.importance import odf2nna as odf2nna_module

UNEVEN = [(0, 1), (1, 1), (1, 8), (8, 9), (9, 23)]


def stream(acc: ChannelAccumulator, data: np.ndarray) -> ChannelAccumulator:
    """Feed ``data`` in the uneven batches above, including an empty one."""
    for lo, hi in UNEVEN:
        acc.update(data[lo:hi])
    return acc


@pytest.mark.parametrize("spatial", [(), (6,), (3, 4)])
def test_odf2nna_std_and_mean_match_numpy_when_streamed_in_uneven_batches(
    spatial: tuple[int, ...],
) -> None:
    rng = np.random.default_rng(0)
    # Large offset, small spread: where naive sum-of-squares streaming loses digits.
    data = (1e4 + rng.standard_normal((23, 5, *spatial)) * 1e-2).astype(np.float32)
    acc = stream(ODF2NNA().accumulator(5), data)
    axes = (0, *range(2, data.ndim))
    ref = data.astype(np.float64)
    np.testing.assert_allclose(acc.mean, ref.mean(axis=axes), rtol=1e-10)
    np.testing.assert_allclose(acc.std, ref.std(axis=axes), rtol=1e-10)
    np.testing.assert_array_equal(acc.scores(), acc.std)
    assert acc.count == 23 * int(np.prod(spatial))


def test_odf2nna_small_internal_chunks_give_the_same_moments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(1)
    data = rng.standard_normal((23, 4, 3)) * 5 + 2
    whole = ODF2NNA().accumulator(4)
    whole.update(data)
    monkeypatch.setattr(odf2nna_module, "CHUNK_ELEMENTS", 7)  # forces 1 sample per chunk
    chunked = ODF2NNA().accumulator(4)
    chunked.update(data)
    np.testing.assert_allclose(chunked.mean, whole.mean, rtol=1e-13)
    np.testing.assert_allclose(chunked.std, whole.std, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_odf2nna_constant_unit_has_exactly_zero_std_and_its_exact_value_as_mean(
    dtype: type,
) -> None:
    # Exactness lets epsilon = 0 drop constant units and fold their mean without error;
    # float64 0.1 is the hard case (numpy's own std of it is ~3e-17, not 0).
    rng = np.random.default_rng(2)
    data = rng.standard_normal((23, 3)).astype(dtype)
    data[:, 1] = dtype(0.1)
    acc = stream(ODF2NNA().accumulator(3), data)
    assert acc.std[1] == 0.0
    assert acc.mean[1] == np.float64(dtype(0.1))
    assert (acc.std[[0, 2]] > 0).all()


def test_odf2nna_rejects_non_finite_activations() -> None:
    data = np.ones((4, 2))
    data[2, 1] = np.inf
    with pytest.raises(DataError, match="NaN or infinity"):
        ODF2NNA().accumulator(2).update(data)


def test_odf2nna_without_samples_is_a_data_error() -> None:
    acc = ODF2NNA().accumulator(2)
    acc.update(np.zeros((0, 2)))
    with pytest.raises(DataError, match="at least one"):
        acc.scores()


def test_l1_magnitude_sums_absolute_weights_per_output_channel() -> None:
    w = np.array(
        [
            [[[1.0, -2.0]], [[0.5, 0.0]]],
            [[[0.0, 0.0]], [[0.0, 0.0]]],
            [[[-3.0, 3.0]], [[1.0, -1.0]]],
        ],
        dtype=np.float32,
    )  # (out=3, in=2, 1, 2)
    scores = L1Magnitude().weight_scores(w)
    np.testing.assert_array_equal(scores, [3.5, 0.0, 8.0])
    assert scores.dtype == np.float64
    assert L1Magnitude.needs_activations is False


def test_l1_magnitude_of_a_one_dimensional_weight_is_its_absolute_value() -> None:
    np.testing.assert_array_equal(L1Magnitude().weight_scores(np.array([-2.0, 3.0])), [2.0, 3.0])


def test_random_scores_are_reproducible_by_seed_and_differ_between_seeds() -> None:
    w = np.zeros((50, 3, 3, 3))
    a, b, c = RandomImportance(seed=7), RandomImportance(seed=7), RandomImportance(seed=8)
    first = a.weight_scores(w)
    assert first.shape == (50,)
    np.testing.assert_array_equal(first, b.weight_scores(w))
    np.testing.assert_array_equal(a.weight_scores(w), b.weight_scores(w))  # same call order
    assert not np.array_equal(first, c.weight_scores(w))
    assert RandomImportance.needs_activations is False


def test_random_scores_need_only_a_channel_count() -> None:
    scores = RandomImportance(seed=3).channel_scores(6)
    np.testing.assert_array_equal(scores, np.random.default_rng(3).random(6))


def test_apoz_importance_is_the_fraction_of_non_zero_activations() -> None:
    act = np.zeros((2, 3, 2, 2), dtype=np.float32)
    act[0, 0] = [[1.0, 0.0], [0.0, 0.0]]  # channel 0: 1 of 8 non-zero
    act[1, 1] = [[2.0, -1.0], [3.0, 4.0]]  # channel 1: 4 of 8
    act[:, 2] = 0.5  # channel 2: 8 of 8
    acc = APoZ().accumulator(3)
    acc.update(act)
    np.testing.assert_array_equal(acc.scores(), [1 / 8, 4 / 8, 1.0])
    np.testing.assert_array_equal(acc.apoz, [7 / 8, 4 / 8, 0.0])


def test_apoz_streamed_equals_one_batch() -> None:
    rng = np.random.default_rng(4)
    act = np.maximum(rng.standard_normal((23, 4, 3, 3)), 0)
    whole = APoZ().accumulator(4)
    whole.update(act)
    np.testing.assert_array_equal(stream(APoZ().accumulator(4), act).scores(), whole.scores())


def test_registry_builds_every_criterion_by_name() -> None:
    assert set(CRITERIA) == {"ocnna", "odf2nna", "l1", "random", "apoz"}
    for name, cls in CRITERIA.items():
        crit = get_criterion(name)
        assert isinstance(crit, cls)
        assert crit.name == name
    assert isinstance(get_criterion(" OCNNA "), OCNNA)


def test_registry_passes_options_to_the_criterion() -> None:
    crit = get_criterion("random", seed=5)
    np.testing.assert_array_equal(
        crit.channel_scores(3), RandomImportance(seed=5).channel_scores(3)
    )


def test_unknown_criterion_is_a_one_line_error_listing_valid_names() -> None:
    with pytest.raises(ParameterError) as info:
        get_criterion("pca")
    message = str(info.value)
    assert "\n" not in message
    assert "'pca'" in message
    for name in ("apoz", "l1", "ocnna", "odf2nna", "random"):
        assert name in message


def test_unknown_criterion_option_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="seed"):
        get_criterion("l1", seed=3)
