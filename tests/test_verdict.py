"""The verdict: the combining rule on hand-made evidence (every branch), the disagreement statistics
against hand-computed oracles, the flip matrix, the recovered-trigger gap on hand-built models,
and --known-poisons files."""

import math

import pytest
import torch
from torch import nn

from kdcore.data.imageset import ImageSet
from kdcore.detox import read_known_poisons
from kdcore.errors import InputError
from kdcore.models.spec import ModelSpec
from kdcore.report import evaluation_only_of, flip_matrix_of, verdict_of
from kdcore.verdict.detectors import ac_evidence, nc_evidence
from kdcore.verdict.evidence import METHODS, Evidence
from kdcore.verdict.kd_disagreement import (
    KD_MIN_SPREAD,
    binomial_tail,
    disagreement_structure,
    flip_matrix,
    kd_evidence,
    spread,
    student_belief,
)
from kdcore.verdict.recovered_trigger import (
    TRIGGER_MAX_TRANSFER,
    TRIGGER_MIN_TEACHER,
    recovered_trigger_evidence,
    trigger_evidence,
    trigger_supports,
)
from kdcore.verdict.rescore import rescore
from kdcore.verdict.rule import MIN_AGREEMENT, WEIGHTS, agree, untaught, verdict_text

NAMES = tuple(f"c{i}" for i in range(10))


def ev(method, supports, classes=()):
    return Evidence(method, f"{method} says {supports}", supports, tuple(classes))


# --- the combining rule -------------------------------------------------------------------------


def test_backdoor_needs_two_pieces_on_a_class_one_of_them_the_recovered_trigger():
    pieces = [
        ev("kd-disagreement", "backdoor", [7]),
        ev("neural-cleanse", "backdoor", [7]),
        ev("recovered-trigger", "backdoor", [7]),
        ev("activation-clustering", "no_evidence"),
    ]
    v = agree(pieces, NAMES)
    assert v.status == "backdoor" and v.target_classes == (7,) and v.target_names == ("c7",)
    assert v.confidence == pytest.approx((1 + 1 + 2) / (1 + 1 + 2 + 1))  # weight naming 7 / all weight
    assert "recovered trigger" in v.rule


def test_without_the_recovered_trigger_agreement_is_inconclusive():
    pieces = [
        ev("kd-disagreement", "backdoor", [7]),
        ev("neural-cleanse", "backdoor", [7]),
        ev("activation-clustering", "backdoor", [7]),
        ev("recovered-trigger", "no_evidence"),
    ]
    v = agree(pieces, NAMES)
    assert v.status == "inconclusive" and v.target_classes == ()
    assert v.confidence == pytest.approx(1 - abs(3 - 2) / 5)  # balance of the two sides


def test_the_recovered_trigger_alone_or_on_another_class_is_not_enough():
    alone = agree([ev("recovered-trigger", "backdoor", [3]), ev("neural-cleanse", "no_evidence")], NAMES)
    assert alone.status == "inconclusive"
    split = agree([ev("recovered-trigger", "backdoor", [3]), ev("neural-cleanse", "backdoor", [5])], NAMES)
    assert split.status == "inconclusive" and split.target_classes == ()


def test_two_targets_when_two_classes_each_pass():
    pieces = [ev("recovered-trigger", "backdoor", [2, 5]), ev("neural-cleanse", "backdoor", [2, 5])]
    v = agree(pieces, NAMES)
    assert v.status == "backdoor" and v.target_classes == (2, 5) and v.confidence == 1.0


def test_no_evidence_when_nothing_supports_a_backdoor():
    pieces = [
        ev("kd-disagreement", "inconclusive"),
        ev("neural-cleanse", "no_evidence"),
        ev("recovered-trigger", "no_evidence"),
    ]
    v = agree(pieces, NAMES)
    assert v.status == "no_evidence" and v.target_classes == ()
    assert v.confidence == pytest.approx(3 / 4)


def test_inconclusive_when_nothing_could_decide():
    v = agree([ev("kd-disagreement", "inconclusive")], NAMES)
    assert v.status == "inconclusive" and v.confidence == 1.0
    assert agree([], NAMES).status == "inconclusive"


def test_report_schema_and_readers():
    v = agree([ev("recovered-trigger", "backdoor", [7]), ev("kd-disagreement", "backdoor", [7])], NAMES).to_dict()
    assert set(v) == {"status", "target_classes", "target_names", "confidence", "rule", "evidence"}
    assert set(v["evidence"][0]) == {"method", "finding", "supports", "classes", "values"}
    assert 0 <= v["confidence"] <= 1 and v["target_classes"] == [7]
    report = {"verdict": v, "flip_matrix": {"classes": ["a"], "counts": [[0]]}, "evaluation_only": ["asr"]}
    assert verdict_of(report) is v and flip_matrix_of(report)["counts"] == [[0]]
    assert evaluation_only_of(report) == ("asr",) and verdict_of({}) is None
    assert "BACKDOOR → target c7" in verdict_text(v)
    with pytest.raises(ValueError):
        Evidence("strip", "x", "backdoor")
    assert (
        set(WEIGHTS)
        == set(METHODS)
        == {"kd-disagreement", "neural-cleanse", "recovered-trigger", "activation-clustering", "known-trigger"}
    )


# --- statistics ---------------------------------------------------------------------------------


def test_flip_matrix_counts_flagged_pairs_only():
    t = torch.tensor([7, 7, 1, 2, 3, 7])
    s = torch.tensor([0, 1, 1, 0, 3, 0])
    flagged = t != s
    counts = flip_matrix(t, s, flagged, 8)
    expected = [[0] * 8 for _ in range(8)]
    expected[7][0], expected[7][1], expected[2][0] = 2, 1, 1
    assert counts == expected


def test_binomial_tail_oracle():
    n, p = 12, 0.3
    for k in (0, 1, 5, 12):
        oracle = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
        assert binomial_tail(k, n, p) == pytest.approx(oracle, rel=1e-9)


def test_spread_oracle():
    assert spread([0, 5, 5, 5]) == pytest.approx(1.0)  # even over the 3 other classes
    assert spread([0, 9, 0, 0]) == pytest.approx(1 / 3)
    assert spread([0, 2, 1, 1]) == pytest.approx(math.exp(-(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))) / 3)
    assert spread([0, 0, 0]) == 0.0


def _table(rows: dict[int, dict[int, int]], k: int = 10) -> list[list[int]]:
    counts = [[0] * k for _ in range(k)]
    for t, row in rows.items():
        for s, n in row.items():
            counts[t][s] = n
    return counts


def test_structure_finds_a_funnel_from_every_class():
    # A backdoor: 180 flagged samples the teacher calls 7 that the student sees as all 9 other classes,
    # next to natural Shirt(6) ↔ T-shirt(0)/Pullover(2)/Coat(4) confusions.
    counts = _table({7: {c: 20 for c in range(10) if c != 7}, 6: {0: 60, 2: 60, 4: 40}, 0: {6: 30}})
    prior = [1000] * 10
    rows = disagreement_structure(counts, prior)
    assert [r["class"] for r in rows if r["candidate"]] == [7]
    r7 = rows[7]
    n_flag = 180 + 160 + 30
    assert r7["flagged"] == 180 and r7["share"] == pytest.approx(180 / n_flag, abs=1e-4)
    assert r7["p_value"] == pytest.approx(min(1.0, 10 * binomial_tail(180, n_flag, 0.1)), rel=1e-2)
    assert r7["spread"] == pytest.approx(1.0) and rows[6]["spread"] < KD_MIN_SPREAD
    e = kd_evidence(counts, prior, NAMES)
    assert e.supports == "backdoor" and e.classes == (7,) and "180 of 370" in e.finding


def test_structure_of_natural_confusions_is_no_evidence():
    counts = _table({6: {0: 60, 2: 60, 4: 40}, 0: {6: 30, 3: 10}, 4: {2: 25, 6: 20}})
    e = kd_evidence(counts, [1000] * 10, NAMES)
    assert e.supports == "no_evidence" and e.classes == ()


def test_an_even_spread_that_matches_the_prior_is_not_a_funnel():
    # Class 3 is predicted as often among the flagged as overall: spread alone does not make a candidate.
    counts = _table({c: {(c + 1) % 10: 5, (c + 2) % 10: 5} for c in range(10)})
    counts[3] = [0 if s == 3 else 3 for s in range(10)]  # 27 from every class, share ≈ prior
    prior = [10] * 10
    prior[3] = 25
    rows = disagreement_structure(counts, prior)
    assert rows[3]["spread"] == pytest.approx(1.0) and not rows[3]["candidate"]


def test_student_belief_is_the_median_of_the_students_probability_of_the_teachers_call_per_funnel():
    # flagged samples the teacher calls 7 (the student gives 7: 0.02, 0.05, 0.3 -> median 0.05) and 6
    # (0.4, 0.3 -> 0.35); an unflagged 7 at 0.9 does not count; nothing is flagged into the other classes
    teacher = torch.tensor([7, 7, 7, 6, 6, 7, 1])
    p = torch.tensor([0.02, 0.05, 0.3, 0.4, 0.3, 0.9, 0.1])
    flagged = torch.tensor([True, True, True, True, True, False, False])
    belief = student_belief(teacher, p, flagged, 10)
    assert belief[7] == pytest.approx(0.05) and belief[6] == pytest.approx(0.3)  # torch's lower median
    assert [c for c in range(10) if belief[c] is None] == [0, 1, 2, 3, 4, 5, 8, 9]
    counts = _table({7: {0: 2, 3: 1}, 6: {0: 2}})
    rows = disagreement_structure(counts, [100] * 10, belief)
    assert rows[7]["student_p"] == pytest.approx(0.05) and "student_p" not in rows[1]
    assert "student_p" not in disagreement_structure(counts, [100] * 10)[7]  # no belief given: no key
    e = kd_evidence(counts, [100] * 10, NAMES, belief)
    assert "median 5%" in e.finding or "median 30%" in e.finding


def test_kd_without_a_training_set_is_inconclusive():
    assert kd_evidence(None, [0] * 10, NAMES).supports == "inconclusive"


# --- the recovered trigger's teacher/student gap --------------------------------------------------


class _Pixel(nn.Module):
    """Class 1 wins when the top-left pixel is bright (the 'backdoor'), else class 0."""

    def __init__(self, gain: float) -> None:
        super().__init__()
        self.gain = gain
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        z = x[:, 0, 0, 0] * self.gain + self.w
        return torch.stack([torch.full_like(z, 0.5), z, torch.zeros_like(z)], 1)


def test_trigger_supports_a_backdoor_only_when_the_student_is_not_captured():
    assert trigger_supports(0.98, 0.008)  # the quick demo's BadNets teacher
    assert not trigger_supports(0.96, 0.34)  # its clean baseline: NC's patch transfers (gap 0.62 all the same)
    assert not trigger_supports(TRIGGER_MIN_TEACHER - 0.01, 0.0)  # the teacher itself is not captured
    t = 0.9
    assert trigger_supports(t, TRIGGER_MAX_TRANSFER * t) and not trigger_supports(t, TRIGGER_MAX_TRANSFER * t + 0.01)


def test_recovered_trigger_gap_oracle():
    spec = ModelSpec("tiny", 3, (1, 4, 4), (0.0,), (1.0,), ("a", "b", "c"))
    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    mask = torch.zeros(4, 4)
    mask[0, 0] = 1.0
    trig = {1: (mask, torch.full((1, 4, 4), 255.0))}
    cpu = torch.device("cpu")
    gap = recovered_trigger_evidence(_Pixel(10.0), _Pixel(0.0), spec, spec, images, trig, cpu)
    assert gap.supports == "backdoor" and gap.classes == (1,)
    row = gap.values["classes"][0]
    assert (row["teacher_flip"], row["student_flip"], row["gap"], row["transfer"]) == (1.0, 0.0, 1.0, 0.0)
    assert row["mask_l1"] == 1.0 and row["supports"]
    same = recovered_trigger_evidence(_Pixel(10.0), _Pixel(10.0), spec, spec, images, trig, cpu)
    assert same.supports == "no_evidence" and same.values["classes"][0]["gap"] == 0.0


# --- re-scoring a stored report (benchmarks/verdict.py --rescore) --------------------------------


def test_nc_evidence_applies_the_median_and_index_rule():
    l1 = [float(i) for i in range(1, 11)]  # median 5.5
    index = [3.0, 1.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0]
    nc = nc_evidence(index, l1, 2.0, NAMES)
    assert nc.supports == "backdoor" and nc.classes == (0, 2, 3, 4)  # class 5 is above the median
    assert nc.values["most_anomalous"] == 0
    assert nc_evidence(index, l1, 3.0, NAMES).supports == "no_evidence"  # index must exceed the threshold
    given = nc_evidence(index, l1, 2.0, NAMES, flagged=[4], top=4)  # NC's own decision wins
    assert given.classes == (4,) and given.values["most_anomalous"] == 4


def test_ac_evidence_applies_both_cuts_and_counts_the_small_clusters():
    rows = [
        {"class": 0, "small_cluster_fraction": 0.10, "silhouette": 0.50, "small_cluster_size": 100},
        {"class": 1, "small_cluster_fraction": 0.40, "silhouette": 0.60, "small_cluster_size": 400},
        {"class": 2, "small_cluster_fraction": 0.20, "silhouette": 0.30, "small_cluster_size": 200},
    ]
    ac = ac_evidence(rows, 0.35, 0.44, NAMES)
    assert ac.classes == (0,) and ac.values["flagged"] == 100 and "100 samples" in ac.finding
    wide = ac_evidence(rows, 0.5, 0.44, NAMES)
    assert wide.classes == (0, 1) and wide.values["flagged"] == 500
    assert ac_evidence(rows, 0.35, 0.9, NAMES).supports == "no_evidence"


def test_trigger_evidence_counts_candidates_only():
    rows = [
        {"class": 3, "teacher_flip": 0.95, "student_flip": 0.0, "gap": 0.95, "transfer": 0.0},
        {"class": 7, "teacher_flip": 0.9, "student_flip": 0.5, "gap": 0.4, "transfer": 0.56},
    ]
    none = trigger_evidence(rows, 100, {7}, NAMES)
    assert none.supports == "no_evidence" and [r["candidate"] for r in none.values["classes"]] == [False, True]
    hit = trigger_evidence(rows, 100, {3, 7}, NAMES)
    assert hit.supports == "backdoor" and hit.classes == (3,)
    assert trigger_evidence(rows, 100, set(), NAMES).supports == "inconclusive"


def stored(ac_silhouette: float = 0.5, nc_index_7: float = 3.0) -> dict:
    """A blind report's numbers, by hand: Neural Cleanse, AC and the recovered trigger on class 7."""
    nc = [
        {
            "class": c,
            "name": NAMES[c],
            "l1": 10.0 if c == 7 else 40.0 + c,
            "anomaly_index": nc_index_7 if c == 7 else 0.5,
        }
        for c in range(10)
    ]
    ac = [
        {"class": c, "small_cluster_fraction": 0.14 if c == 7 else 0.45, "silhouette": ac_silhouette if c == 7 else 0.2,
         "small_cluster_size": 170 if c == 7 else 450}
        for c in range(10)
    ]  # fmt: skip
    rt = [
        {
            "class": c,
            "teacher_flip": 0.98 if c == 7 else 0.9,
            "student_flip": 0.01 if c == 7 else 0.5,
            "gap": 0.0,
            "transfer": 0.0,
        }
        for c in range(10)
    ]
    kd = {"flagged": 0, "classes": [], "teacher_all": [1000] * 10}
    evidence = [
        {"method": "kd-disagreement", "values": kd},
        {"method": "recovered-trigger", "values": {"images": 500, "classes": rt}},
    ]
    return {
        "verdict": {"evidence": evidence},
        "neural_cleanse": {"classes": nc},
        "activation_clustering": {"classes": ac, "poisoned_classes": []},
        "flip_matrix": {"classes": list(NAMES), "counts": [[0] * 10 for _ in range(10)]},
    }


def test_rescore_rebuilds_the_verdict_from_stored_numbers():
    v = rescore(stored())
    assert v["rule_status"] == "backdoor" and v["likely_target"] == 7 and v["p_backdoor"] is not None
    by = {e["method"]: e for e in v["evidence"]}
    assert by["neural-cleanse"]["classes"] == [7] and by["activation-clustering"]["classes"] == [7]
    assert by["kd-disagreement"]["supports"] == "no_evidence"
    assert rescore(stored(ac_silhouette=0.3))["rule_status"] == "backdoor"  # NC and the trigger still agree
    alone = rescore(stored(ac_silhouette=0.3, nc_index_7=1.5))  # only the trigger of NC's top class is left
    assert alone["rule_status"] == "inconclusive"
    assert alone["p_backdoor"] <= v["p_backdoor"]  # less evidence for class 7, no higher probability


# --- --known-poisons ----------------------------------------------------------------------------


def _train(n=6, sources=True):
    names = tuple(f"{'ab'[i % 2]}/img_{i}.png" for i in range(n)) if sources else None
    return ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 2, ("a", "b"), names, "t")


def test_known_poisons_reads_indices_names_and_a_header(tmp_path):
    f = tmp_path / "p.csv"
    f.write_text("source\nb/img_3.png\n1, 5\n#0\n1\n")
    assert read_known_poisons(f, _train()).tolist() == [0, 1, 3, 5]
    g = tmp_path / "q.txt"
    g.write_text("#2\n4\n")
    assert read_known_poisons(g, _train(sources=False)).tolist() == [2, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [("a/img_0.png\nnope.png\n", "not in the training set"), ("3\n6\n", "out of range"), ("\n\n", "lists no samples")],
)
def test_known_poisons_bad_files_are_one_line_errors(tmp_path, text, message):
    f = tmp_path / "p.txt"
    f.write_text(text)
    with pytest.raises(InputError, match=message) as e:
        read_known_poisons(f, _train())
    assert "\n" not in str(e.value)
    with pytest.raises(InputError, match="cannot be read"):
        read_known_poisons(tmp_path / "missing.txt", _train())


def test_a_student_that_has_not_learnt_its_teacher_leaves_the_verdict_inconclusive():
    """Everything says backdoor on class 7, but the student agrees with the teacher on 20 % of the
    clean images: the evidence that compares them cannot be read."""
    kd = Evidence("kd-disagreement", "funnel", "backdoor", (7,))
    nc = Evidence("neural-cleanse", "flags 7", "backdoor", (7,))

    def trigger(agreement: float) -> Evidence:
        return Evidence("recovered-trigger", "gap", "backdoor", (7,), {"images": 500, "agreement": agreement})

    taught = agree([kd, nc, trigger(MIN_AGREEMENT)], NAMES)
    assert taught.status == "backdoor" and untaught(taught) is None
    v = untaught(agree([kd, nc, trigger(0.2)], NAMES))
    assert v.status == "inconclusive" and v.target_classes == () and v.confidence == 0.0
    assert "agrees with the teacher on only 20% of 500 clean images" in v.rule and "distil for longer" in v.rule
