"""Plots of detector outputs.  Every function returns the matplotlib Figure.

matplotlib is imported on first use, so ``import dagmm`` does not need it.
The functions read only public outputs: the ``predict`` dict, arrays and
``detector.history_``.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "plot_feature_outlier_image",
    "plot_feature_outlier_tabular",
    "plot_history",
    "plot_instance_score",
    "plot_roc",
]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "dagmm.utils.visualize needs matplotlib: pip install matplotlib (or pip install 'dagmm[plot]')."
        ) from err
    return plt


def _data(preds: Mapping[str, Any], key: str) -> np.ndarray:
    data = preds.get("data", preds) if isinstance(preds, Mapping) else None
    if data is None or data.get(key) is None:
        raise ValueError(f"preds has no {key!r}: pass the dict returned by detector.predict(...) with "
                         f"return_{key}=True.")
    return np.asarray(data[key])


def _pick(preds: Mapping[str, Any], n: int, instance_ids: Optional[Sequence[int]], max_instances: int,
          outliers_only: bool) -> list[int]:
    if instance_ids is not None:
        ids = [int(i) for i in instance_ids]
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"instance_ids {bad} are out of range for {n} instances.")
    elif outliers_only:
        flags = _data(preds, "is_outlier")
        ids = np.flatnonzero(flags.reshape(n, -1).any(1)).tolist()
    else:
        ids = list(range(n))
    return ids[:max_instances]


def plot_instance_score(preds: Mapping[str, Any], target: Sequence[int], labels: Sequence[str],
                        threshold: float, ylim: Optional[tuple[float, float]] = None,
                        figsize: tuple[float, float] = (8, 4)):
    """Instance scores against the instance index, coloured by true label, with the threshold line.

    Parameters
    ----------
    preds : dict
        Output of ``predict`` (``instance_score`` must be present).
    target : (N,) int
        True labels, used as indices into ``labels``.
    labels : sequence of str
        Legend names, e.g. ``['normal', 'outlier']``.
    threshold : float
        Drawn as a dashed horizontal line.
    ylim : (low, high), optional
    """
    plt = _pyplot()
    scores = _data(preds, "instance_score").ravel()
    target = np.asarray(target).ravel()
    if target.shape != scores.shape:
        raise ValueError(f"target has {target.size} labels but preds has {scores.size} instance scores.")
    fig, ax = plt.subplots(figsize=figsize)
    idx = np.arange(len(scores))
    for k, name in enumerate(labels):
        sel = target == k
        ax.scatter(idx[sel], scores[sel], s=10, label=str(name))
    ax.axhline(threshold, color="k", linestyle="--", label="threshold")
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_xlabel("instance")
    ax.set_ylabel("instance score")
    ax.set_title("Instance scores")
    ax.legend()
    fig.tight_layout()
    return fig


def _to_hwc(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, C) or (C, H, W) -> (H, W, C)."""
    if img.ndim == 2:
        return img[..., None]
    if img.shape[-1] <= 4:
        return img
    if img.shape[0] <= 4:
        return img.transpose(1, 2, 0)  # (H, W, C)
    raise ValueError(f"Cannot tell the channel axis of an image of shape {img.shape}.")


def _show(ax, img: np.ndarray, title: Optional[str]) -> None:
    img = _to_hwc(img)
    if img.shape[2] == 1:
        ax.imshow(img[..., 0], cmap="gray")
    else:
        ax.imshow(np.clip(img, 0, 1))
    if title:
        ax.set_title(title)
    ax.axis("off")


def plot_feature_outlier_image(preds: Mapping[str, Any], X: Any, X_recon: Any = None,
                               instance_ids: Optional[Sequence[int]] = None, max_instances: int = 5,
                               outlier_perc: float = 100, outliers_only: bool = False, n_channels: int = 3,
                               figsize: tuple[float, float] = (20, 20)):
    """One row per instance: the image, its reconstruction, and the feature scores per channel.

    Parameters
    ----------
    preds : dict
        Output of ``predict`` with ``feature_score`` (shape of X).
    X : (N, H, W, C) or (N, C, H, W) images, values in [0, 1] for colour images.
    X_recon : array like X, optional
        Adds a reconstruction column.
    instance_ids : sequence of int, optional
        Instances to show; default the first ones (outliers only if ``outliers_only``).
    max_instances : int, default 5
    outlier_perc : float, default 100
        Shown in the title of each row (the percentage used for the instance score).
    n_channels : int, default 3
        Number of channels whose feature-score maps are shown (at most the image's).
    """
    plt = _pyplot()
    X = np.asarray(X)
    fscore = _data(preds, "feature_score")
    if fscore.shape != X.shape:
        raise ValueError(f"preds['data']['feature_score'] has shape {fscore.shape} but X has shape {X.shape}.")
    ids = _pick(preds, len(X), instance_ids, max_instances, outliers_only)
    if not ids:
        raise ValueError("No instance to plot (outliers_only=True and no instance is flagged).")
    n_img_ch = _to_hwc(X[0]).shape[2]
    n_ch = min(int(n_channels), n_img_ch)
    n_cols = 1 + (X_recon is not None) + n_ch
    fig, axes = plt.subplots(len(ids), n_cols, figsize=figsize, squeeze=False)
    iscore = preds["data"].get("instance_score") if "data" in preds else None
    for row, i in enumerate(ids):
        title = f"Instance {i}"
        if iscore is not None:
            title += f" (score {float(iscore[i]):.3g}, outlier_perc {outlier_perc:g})"
        _show(axes[row, 0], X[i], title)
        col = 1
        if X_recon is not None:
            _show(axes[row, col], np.asarray(X_recon)[i], "Reconstruction")
            col += 1
        fs = _to_hwc(fscore[i])
        for ch in range(n_ch):
            axes[row, col + ch].imshow(fs[..., ch])
            axes[row, col + ch].set_title(f"Outlier score channel {ch}")
            axes[row, col + ch].axis("off")
    fig.tight_layout()
    return fig


def plot_feature_outlier_tabular(preds: Mapping[str, Any], X: Any, X_recon: Any = None,
                                 threshold: Optional[float] = None, instance_ids: Optional[Sequence[int]] = None,
                                 max_instances: int = 5, top_n: int = 10, outliers_only: bool = False,
                                 feature_names: Optional[Sequence[str]] = None, width: float = 0.35,
                                 figsize: tuple[float, float] = (20, 30)):
    """One bar chart per instance of its ``top_n`` largest feature scores.

    With ``X_recon``, each bar group also shows the original and reconstructed
    values next to the score.  ``threshold`` (a feature-level threshold, see
    ``infer_threshold(outlier_type='feature')``) is drawn as a dashed line.
    """
    plt = _pyplot()
    X = np.asarray(X)
    fscore = _data(preds, "feature_score")
    if fscore.ndim != 2 or fscore.shape != X.shape:
        raise ValueError(f"Tabular plots need 2-D X and feature scores of the same shape, got X {X.shape} and "
                         f"feature_score {fscore.shape}.")
    n_feat = X.shape[1]
    names = list(feature_names) if feature_names is not None else [f"f{j}" for j in range(n_feat)]
    if len(names) != n_feat:
        raise ValueError(f"feature_names has {len(names)} names but X has {n_feat} features.")
    ids = _pick(preds, len(X), instance_ids, max_instances, outliers_only)
    if not ids:
        raise ValueError("No instance to plot (outliers_only=True and no instance is flagged).")
    top_n = min(int(top_n), n_feat)
    fig, axes = plt.subplots(len(ids), 1, figsize=figsize, squeeze=False)
    for row, i in enumerate(ids):
        ax = axes[row, 0]
        order = np.argsort(fscore[i])[::-1][:top_n]
        pos = np.arange(top_n)
        if X_recon is None:
            ax.bar(pos, fscore[i][order], width, label="feature score")
        else:
            ax.bar(pos - width, X[i][order], width, label="original")
            ax.bar(pos, np.asarray(X_recon)[i][order], width, label="reconstruction")
            ax.bar(pos + width, fscore[i][order], width, label="feature score")
        if threshold is not None:
            ax.axhline(threshold, color="k", linestyle="--", label="threshold")
        ax.set_xticks(pos)
        ax.set_xticklabels([names[j] for j in order], rotation=45, ha="right")
        ax.set_title(f"Instance {i}: top {top_n} feature scores")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_roc(roc_data: Mapping[str, Mapping[str, Any]], figsize: tuple[float, float] = (8, 6)):
    """ROC curves of several detectors, AUC in the legend.

    Parameters
    ----------
    roc_data : dict
        ``{detector name: {'scores': (N,) scores, higher = more anomalous,
        'labels': (N,) 0/1 with 1 = outlier}}``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    for name, d in roc_data.items():
        labels, scores = np.asarray(d["labels"]).ravel(), np.asarray(d["scores"]).ravel()
        if set(np.unique(labels)) != {0, 1}:
            raise ValueError(f"roc_data[{name!r}]['labels'] must contain both 0 (normal) and 1 (outlier).")
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=f"{name} (AUC = {roc_auc_score(labels, scores):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title("ROC")
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def plot_history(history: Any, figsize: tuple[float, float] = (6, 4)):
    """Training loss (and any logged metric) per epoch.

    Parameters
    ----------
    history : fitted detector or list of dict
        ``detector.history_`` entries ``{'epoch', 'loss'[, metric]}``; a
        metric gets its own axis on the right.
    """
    plt = _pyplot()
    hist = getattr(history, "history_", history)
    if not hist:
        raise ValueError("history is empty: pass a fitted detector or its history_ list.")
    epochs = [h["epoch"] for h in hist]
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(epochs, [h["loss"] for h in hist], marker="o", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    metrics = [k for k in hist[0] if k not in ("epoch", "loss")]
    if metrics:
        ax2 = ax.twinx()
        for k in metrics:
            ax2.plot(epochs, [h[k] for h in hist], marker="s", linestyle="--", color="tab:orange", label=k)
        ax2.set_ylabel(", ".join(metrics))
    ax.set_title("Training history")
    fig.tight_layout()
    return fig
