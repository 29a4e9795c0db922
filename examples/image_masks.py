"""Image outliers from masks: the CIFAR-10 walkthrough of alibi-detect, on dagmm.

Trains a convolutional OutlierAE on normal images, sets the threshold at the
95th percentile of the instance scores of held-out normal images (the
training images reconstruct better than new ones, so a threshold taken on
them would flag far more than 5% of new normal images), pastes uniform-noise masks
of growing size into held-out images with ``apply_mask``, and reports

* the mean instance score for each mask size (it rises with the mask), and
* the share of masked images flagged for several ``outlier_perc`` values:
  scoring only the worst pixels flags small masks much sooner.

By default it runs offline on scikit-learn's bundled 8x8 digits, upscaled to
32x32 and repeated over 3 channels so the shapes match CIFAR-10's; with
``--data cifar10`` it uses ``load_cifar10`` (add ``--download`` the first time).

    python examples/image_masks.py                 # ~1-2 min on 2 CPU cores
    python examples/image_masks.py --data cifar10 --download --epochs 30
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from dagmm import OutlierAE
from dagmm.utils.perturbation import apply_mask

MASK_SIZES = (1, 2, 4, 6, 8, 10, 12, 16)
OUTLIER_PERCS = (100, 25, 5)


def digits_images(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(train 1400, test 397) digits in [0, 1], shape (N, size, size, 3), channels last."""
    from sklearn.datasets import load_digits

    X = (load_digits().images / 16.0).astype(np.float32)
    k = size // 8
    X = np.kron(X, np.ones((k, k), dtype=np.float32))  # (N, size, size)
    X = np.repeat(X[..., None], 3, axis=3)  # (N, size, size, 3)
    perm = np.random.default_rng(0).permutation(len(X))
    return X[perm[:1400]], X[perm[1400:]]


def cifar_images(download: bool, n_train: int = 10000, n_test: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    from dagmm.datasets import load_cifar10

    (X_train, _), (X_test, _) = load_cifar10(download=download)
    return X_train[:n_train].astype(np.float32) / 255, X_test[:n_test].astype(np.float32) / 255


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", choices=["digits", "cifar10"], default="digits")
    ap.add_argument("--download", action="store_true", help="fetch CIFAR-10 if it is not cached")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--n-masks", type=int, default=3, help="masked copies per test image")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("image_masks.png"))
    args = ap.parse_args(argv)

    X_fit, X_test = digits_images() if args.data == "digits" else cifar_images(args.download)
    n_val = len(X_fit) // 5
    X_train, X_val = X_fit[n_val:], X_fit[:n_val]  # X_val: normal images for the threshold only
    print(f"data: {args.data}, train {X_train.shape}, threshold {X_val.shape}, test {X_test.shape}")

    t0 = time.perf_counter()
    od = OutlierAE(data_type="image")
    od.fit(X_train, epochs=args.epochs, batch_size=64, verbose=False, seed=0)
    print(f"trained {args.epochs} epochs in {time.perf_counter() - t0:.1f} s; "
          f"loss {od.history_[0]['loss']:.4f} -> {od.history_[-1]['loss']:.4f}")

    thresholds = {}
    for perc in OUTLIER_PERCS:
        od.infer_threshold(X_val, outlier_perc=perc, threshold_perc=95)
        thresholds[perc] = od.threshold
    clean = {perc: od.score(X_test, outlier_perc=perc)[1] for perc in OUTLIER_PERCS}

    mean_scores, flagged = [], {perc: [] for perc in OUTLIER_PERCS}
    header = f"{'mask':>6} {'mean score':>11} " + " ".join(f"{'flagged@' + str(p):>11}" for p in OUTLIER_PERCS)
    print("threshold: 95th percentile of held-out normal instance scores; clean test images flagged: "
          + ", ".join(f"{np.mean(clean[p] > thresholds[p]):.1%} (outlier_perc={p})" for p in OUTLIER_PERCS))
    print(header)
    print(f"{'none':>6} {clean[100].mean():11.5f} "
          + " ".join(f"{np.mean(clean[p] > thresholds[p]):11.1%}" for p in OUTLIER_PERCS))
    for size in MASK_SIZES:
        X_masked, _ = apply_mask(X_test, mask_size=(size, size), n_masks=args.n_masks, channels=[0, 1, 2],
                                 mask_type="uniform", noise_rng=(0, 1), clip_rng=(0, 1), seed=size)
        row = []
        for perc in OUTLIER_PERCS:
            od.threshold = thresholds[perc]
            preds = od.predict(X_masked, outlier_perc=perc, return_feature_score=False)["data"]
            flagged[perc].append(preds["is_outlier"].mean())
            if perc == 100:
                mean_scores.append(preds["instance_score"].mean())
            row.append(flagged[perc][-1])
        print(f"{size:>3}x{size:<2} {mean_scores[-1]:11.5f} " + " ".join(f"{f:11.1%}" for f in row))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(MASK_SIZES, mean_scores, marker="o", label="masked test images")
    ax1.axhline(clean[100].mean(), color="grey", linestyle=":", label="clean test images")
    ax1.axhline(thresholds[100], color="k", linestyle="--", label="threshold (95th pct, held-out normal)")
    ax1.set_xlabel("mask size (pixels per side)")
    ax1.set_ylabel("mean instance score (outlier_perc=100)")
    ax1.set_title(f"OutlierAE on {args.data}: score vs mask size")
    ax1.legend()
    for perc in OUTLIER_PERCS:
        ax2.plot(MASK_SIZES, np.array(flagged[perc]) * 100, marker="o", label=f"outlier_perc={perc}")
    ax2.set_xlabel("mask size (pixels per side)")
    ax2.set_ylabel("masked images flagged (%)")
    ax2.set_ylim(0, 102)
    ax2.set_title("Detection rate vs mask size")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
