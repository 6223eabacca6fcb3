"""Activation clustering (Chen et al., "Detecting Backdoor Attacks on Deep Neural Networks by
Activation Clustering", SafeAI@AAAI 2019, arXiv:1811.03728; seed 002, "AC: Detailed Methods").

Intuition (seed 002): within the class the attacker relabels to, the poisons and the genuine
samples reach the label for different reasons, so their last hidden activations fall into two
distinct clusters; in a clean class they form one blob that 2-means splits arbitrarily.

1. Run every training sample through the suspect model and capture the input of its last
   `nn.Linear` to run (the penultimate activations, flattened; `choose_layer(..., "penultimate")`):
   A (N, D).
2. Per label class c (the labels of the training set, as in the paper):
   a. reduce A_c to `dims` dimensions (units that never vary dropped first) with PCA (default)
      or ICA (the paper's choice; sklearn FastICA, whitened to unit variance);
   b. k-means with k = 2 (sklearn KMeans, `n_init` restarts, seeded from `inputs.seed`);
   c. record the relative size of the smaller cluster, f_c = |small| / n_c ≤ 0.5, and the mean
      silhouette coefficient s_c = mean_i (b(i) − a(i)) / max(a(i), b(i)) (seed 002).
3. Decision (the paper's relative-size analysis, confirmed by its silhouette analysis): class c
   is poisoned when f_c ≤ `size_threshold` AND s_c ≥ `silhouette_threshold`; its smaller
   cluster is flagged. A clean class splits into two comparable halves or into two clusters
   that barely separate (low s_c); a poisoned one into a small, well-separated cluster.
4. Per-sample score for ranking in manual review (higher = more suspicious):
       score_i = 2 · flagged_i + max(s_c, 0) · d_L / (d_L + d_S)
   with d_L, d_S the distances of the sample's reduced activation to the large and small
   cluster's centroid: the second term, in [0, 1], is high for samples close to the small
   cluster of a class that splits well. Flagged samples score ≥ 2 > every unflagged one.
   Classes with fewer than `min_class_size` samples are skipped (score 0, listed in evidence).

The paper's third analysis, exclusionary reclassification (retrain without the cluster and see
whether the new model puts it back into its label), needs a retraining and is not implemented.

Calibration (quick Fashion-MNIST demo: 10k training images, 200 poisons = 16% of Sneaker; and
the sklearn digits of the tests), PCA, seeds 0–2:
  backdoored demo teacher  Sneaker f = 0.14, s = 0.50 (its small cluster: 170 poisons, 0 clean);
                           every other class s ≤ 0.32
  clean demo baseline      s ≤ 0.38 (Sneaker again: f = 0.28, a natural sub-population)
  digits, both models      s ≤ 0.37 in every class; the 60 poisons are 38% of class 7 and its
                           split (f = 0.37, s = 0.26) looks like any other: no pair of thresholds singles it out
so `silhouette_threshold` = 0.44 sits between the clean maximum and the poisoned class, and
`size_threshold` = 0.35 is that of the IBM reference implementation (ART). ICA is not the
default because it separated the poisons worse on both: after whitening, the poison direction is
one of ten unit-variance components, so the demo's Sneaker split (138 of 1216) gave s = 0.34
against s = 0.37 for a 3.6% split of Trouser, and its silhouettes run lower overall (≤ 0.17 in
most classes); with ICA, lower the threshold.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from kdcore.config import setting
from kdcore.defenses.base import DefenseInputs, Detector
from kdcore.errors import ConfigError
from kdcore.hooks import capture
from kdcore.models.layers import choose_layer
from kdcore.models.spec import ModelSpec
from kdcore.train import batches

REDUCERS = ("ica", "pca")


@dataclass(frozen=True)
class ActivationClusteringConfig:
    reducer: Literal["pca", "ica"] = setting(
        "pca", '"pca", or "ica" (the paper\'s FastICA; separated poisons worse here, see above)'
    )
    dims: int = setting(10, "reduced dimensions per class (paper: 10)")
    size_threshold: float = setting(0.35, "poisoned only if the smaller cluster holds ≤ this fraction of its class")
    silhouette_threshold: float = setting(
        0.44, "…and the split's mean silhouette is ≥ this (calibrated for PCA, above)"
    )
    min_class_size: int = setting(20, "classes with fewer training samples are skipped (too few to cluster)")
    n_init: int = setting(10, "k-means restarts (the best inertia is kept)")
    batch_size: int = setting(256, "images per forward pass")

    def __post_init__(self) -> None:
        if self.reducer not in REDUCERS:
            raise ConfigError(f"reducer must be one of {REDUCERS}; got {self.reducer!r}")
        if self.dims < 1:
            raise ConfigError(f"dims must be ≥ 1; got {self.dims}")
        if not 0.0 < self.size_threshold <= 0.5:
            raise ConfigError(
                f"size_threshold is a fraction of the class in (0, 0.5] (the smaller of two clusters "
                f"never holds more than half); got {self.size_threshold}"
            )
        if not -1.0 <= self.silhouette_threshold <= 1.0:
            raise ConfigError(f"silhouette_threshold must be in [-1, 1]; got {self.silhouette_threshold}")
        if self.min_class_size < 3:
            raise ConfigError(f"min_class_size must be ≥ 3 (2 clusters and a silhouette); got {self.min_class_size}")
        if self.n_init < 1 or self.batch_size < 1:
            raise ConfigError(f"n_init and batch_size must be ≥ 1; got {self.n_init}, {self.batch_size}")


@torch.inference_mode()
def penultimate_activations(
    model: nn.Module, spec: ModelSpec, images_u8: torch.Tensor, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """float32 (N, D) on the CPU: the flattened input of the model's last nn.Linear to run
    (`choose_layer(..., "penultimate")`) per image, in eval mode (modes restored afterwards)."""
    name, layer = choose_layer(model, spec, "penultimate")
    out = []
    with capture(model, {name: layer}, what="input") as cap:
        for idx in batches(len(images_u8), batch_size):
            cap.clear()
            model(spec.normalize(images_u8[idx].to(device, non_blocking=True)))
            out.append(cap.one(name).flatten(1).float().cpu())  # (B, D)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)


def cluster_class(acts: np.ndarray, cfg: ActivationClusteringConfig, seed: int) -> dict:
    """Steps 2a–2c for one class's activations (n, D): the reduced points z (n, dims), which of
    them fall in the smaller cluster, the centroids (large, small), the smaller cluster's fraction
    and the silhouette; or {"skipped": reason}."""
    from sklearn.cluster import KMeans  # heavy: scikit-learn, only when the method runs
    from sklearn.decomposition import PCA, FastICA  # heavy: scikit-learn
    from sklearn.exceptions import ConvergenceWarning  # heavy: scikit-learn
    from sklearn.metrics import silhouette_score  # heavy: scikit-learn

    n = len(acts)
    x = acts.astype(np.float64)  # (n, D)
    x = x[:, x.std(0) > 0]  # dead units carry nothing and make the whitening singular
    rank = int(np.linalg.matrix_rank(x - x.mean(0))) if x.shape[1] else 0
    if rank < 1:
        return {"skipped": "all activations identical"}
    dims = min(cfg.dims, rank)
    converged = True
    if cfg.reducer == "ica":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            z = FastICA(dims, whiten="unit-variance", max_iter=1000, tol=0.005, random_state=seed).fit_transform(x)
        converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)  # → evidence
        for w in caught:  # anything else is passed on
            if not issubclass(w.category, ConvergenceWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    else:
        z = PCA(dims, random_state=seed).fit_transform(x)
    km = KMeans(2, n_init=cfg.n_init, random_state=seed).fit(z)
    labels = km.labels_
    sizes = np.bincount(labels, minlength=2)
    if sizes.min() == 0:
        return {"skipped": "2-means found one cluster"}
    small = int(np.argmin(sizes))  # an exact tie calls cluster 0 the small one
    sil = float(silhouette_score(z, labels)) if n > 2 else 0.0
    return {
        "z": z,
        "in_small": labels == small,
        "centroids": km.cluster_centers_[[1 - small, small]],  # (2, dims): large, small
        "fraction": float(sizes[small] / n),
        "silhouette": sil,
        "dims": dims,
        "ica_converged": converged,
    }


class ActivationClustering(Detector):
    name = "activation-clustering"
    config_class = ActivationClusteringConfig
    needs = ("train",)
    summary = "Activation clustering: per-class 2-means on penultimate activations (Chen et al. 2018)"
    paper = (
        "Chen et al., Detecting Backdoor Attacks on Deep Neural Networks by Activation Clustering, "
        "SafeAI@AAAI 2019 (arXiv:1811.03728)"
    )

    def score(self, inputs: DefenseInputs) -> tuple[torch.Tensor, torch.Tensor, dict]:
        from threadpoolctl import threadpool_limits  # comes with scikit-learn, loaded with it

        cfg = self.config
        labels = inputs.train.require_labels("Activation clustering").numpy()
        model = copy.deepcopy(inputs.model).to(inputs.device).eval()
        acts = penultimate_activations(model, inputs.spec, inputs.train.images, inputs.device, cfg.batch_size)
        scores = np.zeros(len(labels), np.float64)
        flagged = np.zeros(len(labels), bool)
        classes = np.unique(labels).tolist()
        table, skipped = [], []
        # Per-class matrices are small: BLAS/OpenMP threads beyond torch's own count only contend
        # (under load, OpenBLAS's spinning threads made FastICA ~100× slower on 2 cores).
        with threadpool_limits(limits=torch.get_num_threads()):
            for step, c in enumerate(classes):
                inputs.on_progress(self.name, step, len(classes), {"class": c})
                idx = np.flatnonzero(labels == c)  # this class's rows of the training set
                row = {"class": c, "name": inputs.spec.names[c] if c < inputs.spec.num_classes else str(c)}
                row["n"] = len(idx)
                if len(idx) < cfg.min_class_size:
                    res = {"skipped": f"fewer than min_class_size={cfg.min_class_size} samples"}
                else:
                    res = cluster_class(acts[idx], cfg, inputs.seed + c)
                if "skipped" in res:
                    skipped.append({**row, "reason": res["skipped"]})
                    continue
                poisoned = res["fraction"] <= cfg.size_threshold and res["silhouette"] >= cfg.silhouette_threshold
                d = np.linalg.norm(res["z"][:, None, :] - res["centroids"][None], axis=2)  # (n_c, 2): large, small
                closeness = d[:, 0] / np.maximum(d.sum(1), 1e-12)  # 1 = on the small cluster's centroid
                scores[idx] = max(res["silhouette"], 0.0) * closeness  # step 4, second term
                if poisoned:
                    flagged[idx[res["in_small"]]] = True
                row.update(
                    small_cluster_fraction=round(res["fraction"], 4),
                    small_cluster_size=int(res["in_small"].sum()),
                    silhouette=round(res["silhouette"], 4),
                    poisoned=bool(poisoned),
                    dims=res["dims"],
                )
                if cfg.reducer == "ica":
                    row["ica_converged"] = res["ica_converged"]
                table.append(row)
        inputs.on_progress(self.name, len(classes), len(classes), {"flagged": int(flagged.sum())})
        scores += 2.0 * flagged  # step 4, first term: every flagged sample above every other
        evidence = {
            "reducer": cfg.reducer,
            "dims": cfg.dims,
            "layer": f"input of {choose_layer(model, inputs.spec, 'penultimate')[0]}",
            "activation_dim": int(acts.shape[1]),
            "size_threshold": cfg.size_threshold,
            "silhouette_threshold": cfg.silhouette_threshold,
            "classes": table,
            "skipped_classes": skipped,
            "poisoned_classes": [r["class"] for r in table if r["poisoned"]],
        }
        names = [str(r["name"]) for r in table if r["poisoned"]]
        evidence["headline"] = (
            f"poisoned class(es): {', '.join(names)}; {int(flagged.sum()):,} training samples flagged"
            if names
            else "no class splits into a small, well-separated cluster: nothing flagged"
        )
        return torch.from_numpy(scores).float(), torch.from_numpy(flagged), evidence
