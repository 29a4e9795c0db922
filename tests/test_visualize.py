"""Plots: rendered with Agg and checked for what they draw."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from dagmm import OutlierAE  # noqa: E402
from dagmm.utils import visualize as viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _preds(fscore, is_outlier=None):
    inst = fscore.reshape(len(fscore), -1).mean(1)
    flags = (inst > np.median(inst)).astype(int) if is_outlier is None else is_outlier
    return {"meta": {}, "data": {"feature_score": fscore, "instance_score": inst, "is_outlier": flags}}


def _hlines(ax):
    return [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1 and ln.get_linestyle() == "--"]


def test_instance_score_plot(rng):
    scores = np.r_[rng.normal(1, 0.1, 30), rng.normal(3, 0.1, 10)]
    target = np.r_[np.zeros(30, int), np.ones(10, int)]
    fig = viz.plot_instance_score({"data": {"instance_score": scores}}, target, ["normal", "outlier"], 2.0,
                                  ylim=(0, 5))
    (ax,) = fig.axes
    pts = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in pts] == [30, 10]
    np.testing.assert_allclose(pts[1].get_offsets()[:, 1], scores[30:])
    (thr,) = _hlines(ax)
    assert thr.get_ydata()[0] == 2.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["normal", "outlier", "threshold"]
    assert ax.get_ylim() == (0, 5) and ax.get_ylabel() == "instance score"
    with pytest.raises(ValueError, match=r"target has 3 labels but preds has 40 instance scores"):
        viz.plot_instance_score({"data": {"instance_score": scores}}, [0, 1, 0], ["a", "b"], 1.0)


def test_feature_outlier_image_plot(rng):
    X = rng.random((6, 8, 8, 3)).astype(np.float32)
    fs = rng.random(X.shape).astype(np.float32)
    flags = np.array([0, 1, 0, 1, 1, 0])
    preds = _preds(fs, flags)
    fig = viz.plot_feature_outlier_image(preds, X, X_recon=X * 0.5, max_instances=2, outliers_only=True,
                                         figsize=(6, 4))
    assert len(fig.axes) == 2 * (1 + 1 + 3)  # 2 outliers x (image, reconstruction, 3 channel maps)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0].startswith("Instance 1 (score") and titles[5].startswith("Instance 3 (score")
    assert titles[1] == "Reconstruction" and titles[4] == "Outlier score channel 2"
    np.testing.assert_allclose(fig.axes[4].get_images()[0].get_array(), fs[1, :, :, 2])
    # channels-first greyscale-per-channel maps, no reconstruction, explicit ids
    fig2 = viz.plot_feature_outlier_image(_preds(fs.transpose(0, 3, 1, 2)), X.transpose(0, 3, 1, 2),
                                          instance_ids=[5], n_channels=1)
    assert len(fig2.axes) == 2 and all(isinstance(a.get_images()[0], AxesImage) for a in fig2.axes)
    np.testing.assert_allclose(fig2.axes[1].get_images()[0].get_array(), fs[5, :, :, 0])
    with pytest.raises(ValueError, match=r"instance_ids \[9\] are out of range for 6 instances"):
        viz.plot_feature_outlier_image(preds, X, instance_ids=[9])
    with pytest.raises(ValueError, match=r"preds has no 'feature_score'"):
        viz.plot_feature_outlier_image({"data": {"feature_score": None}}, X)


def test_feature_outlier_tabular_plot(rng):
    X = rng.normal(size=(5, 6)).astype(np.float32)
    fs = np.tile(np.arange(6, dtype=np.float32), (5, 1))
    fs[2] = [0, 10, 0, 5, 0, 1]
    names = list("abcdef")
    fig = viz.plot_feature_outlier_tabular(_preds(fs), X, X_recon=X + 1, threshold=4.0, instance_ids=[2, 0],
                                           top_n=3, feature_names=names, figsize=(6, 6))
    assert len(fig.axes) == 2
    ax = fig.axes[0]
    assert len(ax.patches) == 3 * 3  # original, reconstruction, score for the top 3 features
    assert [t.get_text() for t in ax.get_xticklabels()] == ["b", "d", "f"]
    score_bars = [p.get_height() for p in ax.containers[2]]
    assert score_bars == [10, 5, 1]
    assert _hlines(ax)[0].get_ydata()[0] == 4.0
    fig2 = viz.plot_feature_outlier_tabular(_preds(fs), X, max_instances=1)
    assert len(fig2.axes) == 1 and len(fig2.axes[0].patches) == 6
    with pytest.raises(ValueError, match=r"feature_names has 2 names but X has 6 features"):
        viz.plot_feature_outlier_tabular(_preds(fs), X, feature_names=["a", "b"])


def test_roc_plot(rng):
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    good, bad = y + rng.normal(0, 0.5, 100), rng.normal(size=100)
    fig = viz.plot_roc({"good": {"scores": good, "labels": y}, "random": {"scores": bad, "labels": y}})
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"good (AUC = {roc_auc_score(y, good):.3f})", f"random (AUC = {roc_auc_score(y, bad):.3f})",
                      "chance"]
    curve = ax.get_lines()[0]
    assert curve.get_xdata()[0] == 0 and curve.get_xdata()[-1] == 1 and curve.get_ydata()[-1] == 1
    with pytest.raises(ValueError, match=r"must contain both 0 \(normal\) and 1 \(outlier\)"):
        viz.plot_roc({"x": {"scores": good, "labels": np.zeros(100)}})


def test_history_plot_from_a_fitted_detector(tabular):
    od = OutlierAE().fit(tabular[0][:300], epochs=3, verbose=False, seed=0,
                         log_metric=("mae", lambda x, r: (x - r).abs().mean()))
    fig = viz.plot_history(od)
    ax, ax2 = fig.axes
    (loss,) = ax.get_lines()
    np.testing.assert_array_equal(loss.get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(loss.get_ydata(), [h["loss"] for h in od.history_])
    assert ax2.get_ylabel() == "mae" and len(ax2.get_lines()[0].get_xdata()) == 3
    assert len(viz.plot_history(od.history_[:2]).axes[0].get_lines()[0].get_xdata()) == 2
    with pytest.raises(ValueError, match=r"history is empty"):
        viz.plot_history([])


def test_plots_from_real_predictions(tabular):
    X_train, X_test, y_test = tabular
    od = OutlierAE().fit(X_train[:500], epochs=2, verbose=False, seed=0)
    od.infer_threshold(X_train[:500], threshold_perc=95)
    preds = od.predict(X_test[:40])
    fig = viz.plot_instance_score(preds, y_test[:40], ["normal", "outlier"], od.threshold)
    n_pts = sum(len(c.get_offsets()) for c in fig.axes[0].collections)
    assert n_pts == 40
    fig = viz.plot_feature_outlier_tabular(preds, X_test[:40], od.reconstruct(X_test[:40]), max_instances=3)
    assert len(fig.axes) == 3
