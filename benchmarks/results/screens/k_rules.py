import glob, sys, numpy as np, torch
sys.path.insert(0, 'src')  # run from the repository root: python benchmarks/results/screens/k_rules.py (codes from mixture_screen.py --codes /tmp/h19codes)
torch.set_num_threads(1)
from dagmm.models.mixture import kmeans_em
from dagmm.models.gmm import cholesky_with_jitter, precision_cholesky, sample_energy
from sklearn.metrics import roc_auc_score
def energy(p, z):
    chol, _ = cholesky_with_jitter(p.cov, 1e-6)
    return sample_energy(z, p.phi, p.mu, precision_cholesky(chol)).numpy()
KS = (1, 2, 4, 8, 16)
rules = {f'n>={m}K': (lambda n, D, m=m: max(k for k in KS if n >= m * k or k == 1)) for m in (200, 100, 50, 25)}
out = {r: [] for r in list(rules) + ['bic', 'net-K', 'logmse']}
for f in sorted(glob.glob('/tmp/h19codes/*.npz')):
    d = np.load(f); z_tr = torch.tensor(d['z_tr']); z_te = torch.tensor(d['z_te']); y = d['y_te']
    n, D = z_tr.shape
    cache = {}
    def get(k):
        if k not in cache:
            p = kmeans_em(z_tr, k, seed=0); kk = p.phi.shape[0]
            cache[k] = (roc_auc_score(y, energy(p, z_te)), 2 * energy(p, z_tr).sum() + (kk - 1 + kk * D + kk * D * (D + 1) / 2) * np.log(n))
        return cache[k]
    for r, fn in rules.items(): out[r].append(get(fn(n, D))[0])
    cand = [k for k in KS if k == 1 or n >= 20 * k]
    out['bic'].append(get(min(cand, key=lambda k: get(k)[1]))[0])
    netk = 1 if n < 300 else 2 if n < 3000 else 4
    out['net-K'].append(get(netk)[0])
    out['logmse'].append(roc_auc_score(y, d['z_te'][:, -2]))
    print(f.split('/')[-1], n, {r: round(v[-1], 3) for r, v in out.items()}, flush=True)
print(len(out['bic']), {r: round(float(np.mean(v)), 4) for r, v in out.items()})
