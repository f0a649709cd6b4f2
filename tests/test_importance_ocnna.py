"""OCNNA scoring: the batched PCA(0.95) Frobenius norm against scikit-learn, and the CV."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.decomposition import PCA

from onnxprune.blas import _blas_controller, one_blas_thread
from onnxprune.errors import DataError, ParameterError
from onnxprune.importance import OCNNA, pca95_frobenius
from onnxprune.importance.ocnna import _components_needed, coefficient_of_variation


def sklearn_frobenius(a: np.ndarray) -> float:
    """The paper's definition, verbatim: ||PCA(0.95).fit_transform(A)||_F."""
    return float(np.linalg.norm(PCA(n_components=0.95).fit_transform(a.astype(np.float64))))


def assert_matches_sklearn(maps: np.ndarray) -> None:
    got = pca95_frobenius(maps)
    want = np.array([sklearn_frobenius(a) for a in maps])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("shape", [(7, 7), (16, 8), (4, 32), (2, 2), (3, 5), (64, 4), (32, 32)])
def test_pca95_frobenius_matches_sklearn_on_random_maps(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    maps = rng.standard_normal((40, *shape)).astype(np.float32)
    assert_matches_sklearn(maps)


@pytest.mark.parametrize("shape", [(7, 7), (16, 8), (4, 32)])
def test_pca95_frobenius_matches_sklearn_on_relu_maps_with_offset(
    shape: tuple[int, int],
) -> None:
    # Post-ReLU maps: many exact zeros and a large common offset on the rest.
    rng = np.random.default_rng(7)
    maps = np.maximum(rng.standard_normal((30, *shape)) + 0.3, 0) * 50 + 0
    maps[maps > 0] += 100.0
    assert_matches_sklearn(maps.astype(np.float32))


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("shape", [(7, 7), (12, 5), (5, 12)])
def test_pca95_frobenius_matches_sklearn_on_rank_deficient_maps(
    rank: int, shape: tuple[int, int]
) -> None:
    rng = np.random.default_rng(rank)
    u = rng.standard_normal((20, shape[0], rank))
    v = rng.standard_normal((20, rank, shape[1]))
    assert_matches_sklearn(u @ v)


def test_pca95_frobenius_keeps_one_component_only_when_it_explains_over_95_percent() -> None:
    # Two orthogonal, already centred columns with variances 96:4 vs 94:6.
    s = np.array([1.0, -1.0, 1.0, -1.0])
    t = np.array([1.0, 1.0, -1.0, -1.0])
    one = np.stack([np.sqrt(24.0) * s, 1.0 * t], axis=1)  # 96 + 4: first is enough
    two = np.stack([np.sqrt(23.5) * s, np.sqrt(1.5) * t], axis=1)  # 94 + 6: need both
    got = pca95_frobenius(np.stack([one, two]))
    np.testing.assert_allclose(got, [np.sqrt(96.0), 10.0], rtol=1e-12)
    np.testing.assert_allclose(got, [sklearn_frobenius(one), sklearn_frobenius(two)], rtol=1e-12)


def test_components_needed_uses_strictly_greater_than_95_percent_like_sklearn() -> None:
    # sklearn: searchsorted(cumsum, 0.95, side="right") + 1, so exactly 0.95 is not enough.
    cumsum = np.array([[0.95, 1.0, 1.0], [0.9500001, 1.0, 1.0], [0.5, 0.9, 0.999999]])
    got = _components_needed(cumsum)
    want = [np.searchsorted(c, 0.95, side="right") + 1 for c in cumsum]
    np.testing.assert_array_equal(got, [2, 1, 3])
    np.testing.assert_array_equal(got, want)


def test_components_needed_is_capped_when_roundoff_keeps_cumsum_below_threshold() -> None:
    assert _components_needed(np.array([[0.9, 0.94]]))[0] == 2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_zero_and_constant_maps_give_exactly_zero(dtype: type) -> None:
    # float64 0.1 is the hard case: a plain column mean of it is off by one ulp.
    maps = np.stack([np.zeros((6, 5)), np.full((6, 5), 0.1), np.full((6, 5), -3.7e4)])
    got = pca95_frobenius(maps.astype(dtype))
    np.testing.assert_array_equal(got, [0.0, 0.0, 0.0])


def test_map_with_constant_columns_depends_only_on_the_varying_ones() -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((9, 6))
    a[:, [1, 4]] = 0.1  # constant features carry no variance
    np.testing.assert_allclose(pca95_frobenius(a[None])[0], sklearn_frobenius(a), rtol=1e-10)
    np.testing.assert_allclose(
        pca95_frobenius(a[None])[0], pca95_frobenius(np.delete(a, [1, 4], axis=1)[None])[0]
    )


@pytest.mark.parametrize("shape", [(7, 7), (3, 8), (8, 3)])
def test_single_nonzero_pixel_matches_sklearn(shape: tuple[int, int]) -> None:
    maps = np.zeros((3, *shape))
    maps[0, 0, 0] = 5.0
    maps[1, shape[0] // 2, shape[1] - 1] = -2.0
    maps[2, shape[0] - 1, 1] = 1e-3
    assert_matches_sklearn(maps)
    assert (pca95_frobenius(maps) > 0).all()


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (1, 1)])
def test_single_row_or_column_map_uses_plain_uncentred_frobenius_norm(
    shape: tuple[int, int],
) -> None:
    rng = np.random.default_rng(5)
    maps = rng.standard_normal((4, *shape)).astype(np.float32) + 2.0
    want = np.sqrt((maps.astype(np.float64) ** 2).sum(axis=(1, 2)))
    np.testing.assert_allclose(pca95_frobenius(maps), want, rtol=1e-12)


def test_one_by_one_map_is_the_absolute_value() -> None:
    maps = np.array([-3.0, 0.0, 2.5]).reshape(3, 1, 1)
    np.testing.assert_array_equal(pca95_frobenius(maps), [3.0, 0.0, 2.5])


def test_leading_axes_are_kept_in_the_result_shape() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((2, 3, 6, 5))
    got = pca95_frobenius(maps)
    assert got.shape == (2, 3)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got[1, 2], sklearn_frobenius(maps[1, 2]), rtol=1e-10)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 1000])
def test_chunk_size_does_not_change_the_result(chunk_size: int) -> None:
    rng = np.random.default_rng(11)
    maps = rng.standard_normal((25, 6, 9)).astype(np.float32)
    maps[4] = 0.0  # a dead map inside some chunks
    np.testing.assert_array_equal(
        pca95_frobenius(maps, chunk_size=chunk_size), pca95_frobenius(maps)
    )


def test_strided_channels_last_view_gives_the_same_result_as_contiguous_maps() -> None:
    # observe() hands NHWC activations over as np.moveaxis views.
    rng = np.random.default_rng(12)
    nhwc = rng.standard_normal((5, 6, 7, 4)).astype(np.float32)
    view = np.moveaxis(nhwc, 3, 1)
    assert not view.flags.c_contiguous
    want = pca95_frobenius(np.ascontiguousarray(view))
    for chunk_size in (None, 1, 3, 9):
        np.testing.assert_array_equal(pca95_frobenius(view, chunk_size=chunk_size), want)


def test_empty_batch_gives_an_empty_result() -> None:
    assert pca95_frobenius(np.zeros((0, 3, 4, 4))).shape == (0, 3)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
@pytest.mark.parametrize("shape", [(4, 4), (1, 4)])
def test_non_finite_maps_are_rejected_with_a_data_error(bad: float, shape: tuple[int, int]) -> None:
    maps = np.ones((2, *shape))
    maps[1, 0, 2] = bad
    with pytest.raises(DataError, match="NaN or infinity"):
        pca95_frobenius(maps)


def test_coefficient_of_variation_on_known_frobenius_values() -> None:
    f = np.array([[1.0, 2.0, 0.0], [3.0, 2.0, 0.0]])
    # channel 0: mean 2, std 1; channel 1: constant; channel 2: dead
    np.testing.assert_array_equal(coefficient_of_variation(f), [0.5, 0.0, 0.0])


def test_ocnna_scores_dense_units_by_cv_of_absolute_activation() -> None:
    acc = OCNNA().accumulator(3)
    acc.update(np.array([[1.0, -2.0, 4.0], [-3.0, 2.0, 0.0]], dtype=np.float32))
    np.testing.assert_array_equal(acc.frobenius, [[1.0, 2.0, 4.0], [3.0, 2.0, 0.0]])
    np.testing.assert_allclose(acc.scores(), [0.5, 0.0, 1.0], rtol=1e-15)


def test_ocnna_scores_conv_channels_by_cv_of_sklearn_frobenius() -> None:
    rng = np.random.default_rng(2)
    act = np.maximum(rng.standard_normal((6, 3, 8, 5)), 0).astype(np.float32)
    acc = OCNNA().accumulator(3)
    acc.update(act)
    f = np.array([[sklearn_frobenius(act[n, c]) for c in range(3)] for n in range(6)])
    np.testing.assert_allclose(acc.frobenius, f, rtol=1e-5)
    np.testing.assert_allclose(acc.scores(), f.std(axis=0) / f.mean(axis=0), rtol=1e-5)


def test_dead_channel_scores_zero_and_every_score_is_finite() -> None:
    rng = np.random.default_rng(4)
    act = rng.standard_normal((5, 4, 6, 6)).astype(np.float32)
    act[:, 2] = 0.0
    acc = OCNNA().accumulator(4)
    acc.update(act)
    scores = acc.scores()
    assert scores.shape == (4,)
    assert scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert scores[2] == 0.0
    assert (np.delete(scores, 2) > 0).all()


def test_conv1d_activation_is_scored_as_a_one_row_map() -> None:
    rng = np.random.default_rng(6)
    act = rng.standard_normal((4, 3, 10))
    acc = OCNNA().accumulator(3)
    acc.update(act)
    np.testing.assert_allclose(acc.frobenius, np.linalg.norm(act, axis=2), rtol=1e-12)


def test_volumetric_activation_merges_leading_spatial_axes_into_rows() -> None:
    rng = np.random.default_rng(8)
    act = rng.standard_normal((3, 2, 4, 3, 5))  # N, C, D, H, W
    acc = OCNNA().accumulator(2)
    acc.update(act)
    want = [[sklearn_frobenius(act[n, c].reshape(12, 5)) for c in range(2)] for n in range(3)]
    np.testing.assert_allclose(acc.frobenius, want, rtol=1e-5)


def test_streaming_in_uneven_batches_gives_exactly_the_one_batch_scores() -> None:
    rng = np.random.default_rng(9)
    act = np.maximum(rng.standard_normal((11, 5, 7, 9)), 0).astype(np.float32)
    whole = OCNNA().accumulator(5)
    whole.update(act)
    streamed = OCNNA(chunk_size=4).accumulator(5)
    for lo, hi in [(0, 3), (3, 4), (4, 4), (4, 11)]:
        streamed.update(act[lo:hi])
    np.testing.assert_array_equal(streamed.frobenius, whole.frobenius)
    np.testing.assert_array_equal(streamed.scores(), whole.scores())


def test_shards_concatenated_through_frobenius_give_the_same_scores() -> None:
    rng = np.random.default_rng(10)
    act = rng.standard_normal((8, 3, 5, 5))
    whole, left, right, merged = (OCNNA().accumulator(3) for _ in range(4))
    whole.update(act)
    left.update(act[:5])
    right.update(act[5:])
    merged.update_frobenius(left.frobenius)
    merged.update_frobenius(right.frobenius)
    np.testing.assert_array_equal(merged.scores(), whole.scores())


def test_accumulator_rejects_activation_with_wrong_channel_count() -> None:
    acc = OCNNA().accumulator(4)
    with pytest.raises(ValueError, match=r"\(N, 4, \.\.\.\)"):
        acc.update(np.zeros((2, 3, 4, 4)))


def test_scores_without_any_sample_is_a_data_error() -> None:
    with pytest.raises(DataError, match="at least one"):
        OCNNA().accumulator(2).scores()


def test_bad_chunk_size_is_a_parameter_error() -> None:
    with pytest.raises(ParameterError, match="chunk_size"):
        OCNNA(chunk_size=0)


def test_blas_runs_single_threaded_only_while_solving_and_is_restored_after() -> None:
    # Many tiny eigvalsh calls are 5-10x slower with OpenBLAS threads; see blas.py.
    pytest.importorskip("threadpoolctl")
    controller = _blas_controller()

    def blas_threads() -> list[int]:
        return [i["num_threads"] for i in controller.info() if i["user_api"] == "blas"]

    before = blas_threads()
    assert before  # numpy's own BLAS is always loaded
    with one_blas_thread():
        assert blas_threads() == [1] * len(before)
    assert blas_threads() == before
