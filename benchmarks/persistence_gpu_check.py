"""GPU check for save/load: CUDA round trip, CUDA -> CPU, and the CPU fallback; prints one line per check.

Run on a machine with CUDA: ``PYTHONPATH=src python3 benchmarks/persistence_gpu_check.py``.
"""
import warnings

import numpy as np
import torch

from dagmm import OutlierAE, OutlierAEGMM, load_detector, save_detector

rng = np.random.default_rng(0)
X = rng.normal(size=(2000, 10)).astype(np.float32)
od = OutlierAEGMM(n_gmm=2, device="cuda").fit(X, epochs=2, verbose=False, seed=0)
od.infer_threshold(X, 90)
save_detector(od, "persistence-gpu-check/aegmm")
same = load_detector("persistence-gpu-check/aegmm")
print("cuda->cuda bit-identical:", np.array_equal(same.score(X), od.score(X)), same.phi_.device, next(same.aegmm.parameters()).device)
cpu = load_detector("persistence-gpu-check/aegmm", device="cpu")
s_gpu, s_cpu = od.score(X), cpu.score(X)
print("cuda->cpu max abs diff:", float(np.abs(s_gpu - s_cpu).max()), "flags agree:", float((cpu.predict(X)["data"]["is_outlier"] == od.predict(X)["data"]["is_outlier"]).mean()))
_real = torch.cuda.is_available
torch.cuda.is_available = lambda: False
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    fb = load_detector("persistence-gpu-check/aegmm")
print("no-cuda fallback:", fb.device, [str(x.message)[:60] for x in w])
torch.cuda.is_available = _real
torch.backends.cudnn.deterministic = True  # else cuDNN may pick other conv kernels per call
img = rng.random((128, 16, 16, 1)).astype(np.float32)
ae = OutlierAE(device="cuda").fit(img, epochs=1, verbose=False, seed=0)
save_detector(ae, "persistence-gpu-check/ae")
ae2 = load_detector("persistence-gpu-check/ae")
print("conv AE cuda->cuda bit-identical:", np.array_equal(ae.score(img)[1], ae2.score(img)[1]))
