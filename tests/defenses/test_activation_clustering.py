"""Activation clustering (Chen et al. 2018; seed 002) on the backdoored digits model: activations and
per-class statistics against hand-written hooks and sklearn, the decision rule, ranking, edge cases.

On digits the class-level rule is weak by nature: the 60 poisons are 38% of class 7 (above the
paper's relative-size threshold) and natural writing styles split as well as they do (silhouettes
0.25–0.36 everywhere). So the tests check that the 2-means split of class 7 isolates the poisons,
and that the default thresholds (calibrated on the Fashion-MNIST demo) accuse no clean class.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score
from torch import nn

from kdcore.defenses import ActivationClustering, get_defense
from kdcore.defenses.activation_clustering import ActivationClusteringConfig, penultimate_activations
from kdcore.errors import ConfigError
from kdcore.models.registry import build_model
from kdcore.train import TrainConfig, fit, seeded_model

# The paper's "flag the smaller cluster" with no class-level filter: every class is "poisoned".
FLAG_SMALLER = {"size_threshold": 0.5, "silhouette_threshold": -1.0}


def run(inputs, **params):
    return ActivationClustering.from_params(params).run(inputs)


def rows(result) -> dict[int, dict]:
    return {r["class"]: r for r in result.evidence["classes"]}


def is_poison(inputs) -> torch.Tensor:
    mask = torch.zeros(len(inputs.train), dtype=torch.bool)
    mask[inputs.poison_idx] = True
    return mask


@pytest.fixture(scope="module")
def clean_digits(digits, digits_spec):
    """The fixture's 1000 training images without poisons, and a paper-cnn trained on them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures are set up before the autouse one that does this
    perm = torch.randperm(len(digits), generator=torch.Generator().manual_seed(0))
    train = digits.subset(perm[:1000])
    model = seeded_model(lambda: build_model(digits_spec), 0)
    model, _ = fit(model, digits_spec, train, TrainConfig(epochs=25, batch_size=50), torch.device("cpu"))
    torch.set_num_threads(threads)
    return train, model.eval()


def test_penultimate_activations_are_the_input_of_the_last_linear(digits_backdoor):
    inputs = digits_backdoor()
    m, x = inputs.model, inputs.spec.normalize(inputs.train.images[:20])
    with torch.inference_mode():
        expected = torch.relu(m.classifier[1](m.features(x).flatten(1)))  # (20, 256): what classifier[3] sees
    got = penultimate_activations(m, inputs.spec, inputs.train.images[:20], inputs.device, batch_size=7)
    assert got.shape == (20, 256)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_class_statistics_match_sklearn_and_the_decision_rule(digits_backdoor):
    inputs = digits_backdoor(seed=3)
    result = run(inputs, reducer="pca")
    acts = penultimate_activations(inputs.model, inputs.spec, inputs.train.images, inputs.device)
    labels = inputs.train.labels.numpy()
    for c in (2, 7):
        x = acts[labels == c].astype(np.float64)
        z = PCA(10).fit_transform(x[:, x.std(0) > 0])
        km = KMeans(2, n_init=10, random_state=3 + c).fit(z)
        sizes = np.bincount(km.labels_)
        assert rows(result)[c]["n"] == len(x)
        assert rows(result)[c]["small_cluster_size"] == sizes.min()
        assert rows(result)[c]["small_cluster_fraction"] == pytest.approx(sizes.min() / len(x), abs=1e-4)
        assert rows(result)[c]["silhouette"] == pytest.approx(silhouette_score(z, km.labels_), abs=1e-4)
    cfg = ActivationClusteringConfig()
    for r in result.evidence["classes"]:
        expected = r["small_cluster_fraction"] <= cfg.size_threshold and r["silhouette"] >= cfg.silhouette_threshold
        assert r["poisoned"] == expected
    assert result.evidence["poisoned_classes"] == [r["class"] for r in result.evidence["classes"] if r["poisoned"]]


def test_the_smaller_cluster_of_class_7_holds_the_poisons(digits_backdoor):
    inputs = digits_backdoor()
    result = run(inputs, reducer="pca", **FLAG_SMALLER)
    poison, in7 = is_poison(inputs), inputs.train.labels == 7
    flagged7 = result.flagged & in7
    assert int((flagged7 & poison).sum()) >= 50  # of 60 (measured: 54)
    assert int((flagged7 & poison).sum()) / int(flagged7.sum()) >= 0.85  # measured 54/58
    assert result.detection.recall >= 0.85
    assert set(result.evidence["poisoned_classes"]) == set(range(10))


def test_default_thresholds_accuse_no_clean_class(digits_backdoor, clean_digits):
    train, clean_model = clean_digits
    on_poisoned = run(digits_backdoor())
    assert set(on_poisoned.evidence["poisoned_classes"]) <= {7}
    for inputs in (digits_backdoor(model=clean_model, train=train, poison_idx=None), digits_backdoor(train=train)):
        result = run(inputs)
        assert result.evidence["poisoned_classes"] == []
        assert int(result.flagged.sum()) == 0
        assert len(result.evidence["classes"]) == 10


def test_scores_rank_every_flagged_sample_first(digits_backdoor):
    inputs = digits_backdoor()
    result = run(inputs, reducer="pca", **FLAG_SMALLER)
    s, f = result.scores, result.flagged
    assert 0 < int(f.sum()) < len(f)
    assert float(s[f].min()) > float(s[~f].max())
    assert float(s.min()) >= 0.0 and float(s.max()) <= 3.0
    # Within class 7, poisons outrank clean sevens (AUC, measured ≈ 0.95).
    in7, poison = inputs.train.labels == 7, is_poison(inputs)
    p, c = s[in7 & poison], s[in7 & ~poison]
    assert float((p[:, None] > c[None, :]).float().mean()) >= 0.85


@pytest.mark.parametrize("reducer", ["pca", "ica"])
def test_same_seed_same_flags(digits_backdoor, reducer):
    a = run(digits_backdoor(seed=5), reducer=reducer, **FLAG_SMALLER)
    b = run(digits_backdoor(seed=5), reducer=reducer, **FLAG_SMALLER)
    assert torch.equal(a.flagged, b.flagged) and torch.equal(a.scores, b.scores)
    assert a.evidence == b.evidence


def test_ica_runs_and_reports_convergence(digits_backdoor):
    result = run(digits_backdoor(), reducer="ica", **FLAG_SMALLER)
    assert result.evidence["reducer"] == "ica"
    assert len(result.evidence["classes"]) == 10
    for r in result.evidence["classes"]:
        assert isinstance(r["ica_converged"], bool) and r["dims"] == 10
        assert -1.0 <= r["silhouette"] <= 1.0 and 0.0 < r["small_cluster_fraction"] <= 0.5
    assert result.detection.true_positives > 0
    json.dumps(result.report())


@pytest.mark.parametrize("reducer", ["pca", "ica"])
def test_a_class_of_three_is_skipped_or_clustered(digits_backdoor, reducer):
    base = digits_backdoor()
    labels = base.train.labels
    keep = torch.cat([torch.nonzero(labels != 3).squeeze(1), torch.nonzero(labels == 3).squeeze(1)[:3]]).sort().values
    train = base.train.subset(keep)
    skipped = run(digits_backdoor(train=train, poison_idx=None), reducer=reducer)
    assert [(r["class"], r["n"]) for r in skipped.evidence["skipped_classes"]] == [(3, 3)]
    assert 3 not in rows(skipped)
    in3 = train.labels == 3
    assert not skipped.flagged[in3].any() and torch.all(skipped.scores[in3] == 0)
    clustered = run(digits_backdoor(train=train, poison_idx=None), reducer=reducer, min_class_size=3)
    assert clustered.evidence["skipped_classes"] == []
    assert rows(clustered)[3]["n"] == 3 and rows(clustered)[3]["small_cluster_size"] == 1
    assert rows(clustered)[3]["dims"] <= 2


@pytest.mark.parametrize(
    "params",
    [
        {"reducer": "tsne"},
        {"dims": 0},
        {"size_threshold": 0.0},
        {"size_threshold": 0.6},
        {"silhouette_threshold": 1.5},
        {"min_class_size": 2},
        {"n_init": 0},
        {"batch_size": 0},
        {"clusters": 3},
    ],
)
def test_bad_settings_raise_config_error(params):
    with pytest.raises(ConfigError):
        ActivationClustering.from_params(params)


def test_a_model_without_a_linear_layer_is_a_config_error(digits_backdoor, digits_spec):
    model = nn.Sequential(nn.Conv2d(1, 10, 8), nn.Flatten())
    with pytest.raises(ConfigError, match=r"no nn\.Linear"):
        run(digits_backdoor(model=model))


def test_registered_and_leaves_the_suspect_model_alone(digits_backdoor):
    assert get_defense("activation-clustering") is ActivationClustering
    assert ActivationClustering.family == "detector" and ActivationClustering.needs == ("train",)
    inputs = digits_backdoor()
    before = {k: v.clone() for k, v in inputs.model.state_dict().items()}
    inputs.model.train()
    stages = []
    inputs.on_progress = lambda stage, step, total, metrics: stages.append((stage, step, total))
    result = run(inputs)
    assert inputs.model.training
    assert all(torch.equal(before[k], v) for k, v in inputs.model.state_dict().items())
    assert stages[0] == ("activation-clustering", 0, 10) and stages[-1] == ("activation-clustering", 10, 10)
    assert result.evidence["layer"] == "input of classifier.3"
    json.dumps(result.report())
