"""Every model of the zoo, as a recipe, and the split into a calibration and a held-out part.

A recipe says how one model is made: its architecture, its attack (the trigger and how many
training images are poisoned, or "clean") or, for a clean model, what makes it hard, its seed and its
training. The split is fixed in benchmarks/zoo_split.json before anything is scored (written once by
`python benchmarks/zoo.py --write-split`; tests/benchmarks/test_zoo.py checks that the recipes here
still match it, so a recipe cannot move between parts after the fact).

- calibration (32 models, half clean): seeds 0–15 (+50), four architectures (paper-cnn, paper-vgg11,
  resnet18-small, mobilenet-onnx), attacks BadNets (sizes 1–5 at five positions), Blended, SIG,
  WaNet, an image patch, source-specific BadNets and Blended, poison rates 0.5–10 %;
- calibration, second half (64 models, half clean: CALIBRATION2_*): seeds 300 and up, added with the
  fresh part before either was made;
- fresh held-out (64 models, 32 clean: FRESH_*): seeds 400 and up, five architectures, scored only
  after the refit on both calibration halves;
- long-trained slices (LONG: 10,000 images, 5 epochs, like the quick demo's teacher): 16 calibration
  models (seeds 500 and up) and 8 fresh held-out ones (seeds 600 and up), half clean;
- a third held-out part (32 models, 16 clean: THIRD_*): seeds 700 and up, fixed after the shipped fit was
  chosen and before any of its models was made;
- a fourth held-out part (60 models, 30 clean: FOURTH_*): seeds 900 and up, fixed before the verdict's
  change that followed the third part, scored once after it;
- a fifth held-out part (16 models, 8 clean: FIFTH_*): seeds 1100 and up, fixed after the fourth was
  scored (11 of its poisonings had not taken), before any of its models was made, the verdict unchanged;
- held-out (60 models, 30 clean, and a reserve of 30 more, 10 clean: RESERVE_ATTACKS): seeds 100 and
  up, the same four architectures plus one calibration
  never sees (groupnorm-pt2, a .pt2 file), the same attack families with other sizes, positions,
  targets and rates, plus one attack calibration never sees (`blend`: a picture blended over the
  whole image, as with Hello Kitty).

Clean models are hard on purpose: plain, label noise (20 % of labels uniformly wrong), class imbalance
(one class with 50 % more images, like a target class inflated by poisons), short training (1 epoch),
`shirt` (a quarter of T-shirt/Pullover/Coat labelled Shirt: the confusions concentrate on one class)
and `merge` (30 % of classes 0/2/4/6 relabelled among themselves).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

N_TRAIN, EPOCHS = 4000, 3  # training images and epochs of every model but the slow ones
# Training images per second on 2 CPU threads (sgemm 178 GFLOP/s): paper-cnn 1,294, mobilenet-onnx
# 3,253, groupnorm-pt2 3,041, paper-vgg11 187, resnet18-small 63. The slow two get fewer images and
# epochs, and come up less often in the cycles below (the audit distils a student of the same
# architecture and Neural Cleanse differentiates through the teacher: their audits cost as much more).
SLOW = {"paper-vgg11": (3000, 2), "resnet18-small": (2000, 2)}
# Architectures cycle through these (one slot each): every architecture in every part, backdoored and
# clean, the cheap ones far more often (a part's backdoored models take slots 0…, its clean ones 1…)
_C, _M, _G, _V, _R = "paper-cnn", "mobilenet-onnx", "groupnorm-pt2", "paper-vgg11", "resnet18-small"
CALIBRATION_ARCHS = (_C, _M, _C, _M, _V, _C, _M, _C, _M, _C, _M, _C, _R, _M, _C, _M) + (_C, _M) * 8
HELDOUT_ARCHS = (_C, _G, _M, _C, _V, _G, _M, _C, _G, _M, _C, _G, _R, _M, _C, _G, _M, _C, _G, _M)  # _G: never calibrated
MIN_CLEAN_ACC = 0.5  # a model under this clean accuracy never learnt the task (VGG-11 at 2 epochs: 0.21-0.28)
MIN_ASR = 0.5  # a poisoned model whose trigger sends fewer test images to the target has no backdoor
HARD = ("", "label-noise", "imbalance", "short", "shirt", "merge")  # "" = plainly trained
# the split's parts: calibration fits the verdict; the held-out parts score it ("fresh" was added before
# the refit on the calibration's second half, after "heldout" had been looked at)
PARTS = ("calibration", "heldout", "fresh", "third", "fourth", "fifth")
HELD_OUT = ("heldout", "fresh", "third", "fourth", "fifth")
# the held-out parts fixed in the split before the shipped fit's last change and scored only after it: what the
# fit never saw in any form (the earlier ones were looked at while the verdict changed)
UNTOUCHED = ("fourth", "fifth")


@dataclass(frozen=True)
class Recipe:
    name: str  # the model's folder under the zoo's out folder
    part: str  # "calibration" or "heldout"
    arch: str  # an archs.ARCHS key
    attack: str  # "clean" or the trigger's kind
    trigger: dict | None  # Trigger.to_dict() fields (a patch/blend image by file name, in <out>/triggers)
    n_poison: int
    seed: int
    hard: str = ""  # clean models only: one of HARD
    n_train: int = N_TRAIN
    epochs: int = EPOCHS

    @property
    def rate(self) -> float:
        return self.n_poison / self.n_train

    @property
    def target(self) -> int | None:
        return None if self.trigger is None else self.trigger["target"]

    def to_dict(self) -> dict:
        return asdict(self)


# (kind, trigger settings without the target, poison rate); a `source` setting makes it source-specific
CALIBRATION_ATTACKS = [
    ("badnets", {"size": 3, "location": "bottom-right"}, 0.025),
    ("badnets", {"size": 1, "location": "top-left"}, 0.05),
    ("badnets", {"size": 2, "location": "center"}, 0.025),
    ("badnets", {"size": 4, "location": "bottom-left"}, 0.01),
    ("badnets", {"size": 5, "location": "top-right"}, 0.025),
    ("badnets", {"size": 3, "location": "bottom-right"}, 0.005),
    ("badnets", {"size": 3, "location": "top-left"}, 0.10),
    ("blended", {"alpha": 0.1}, 0.025),
    ("blended", {"alpha": 0.2}, 0.05),
    ("sig", {}, 0.025),
    ("sig", {}, 0.05),
    ("wanet", {}, 0.05),
    ("patch", {"image": "patch.png", "location": "top-left"}, 0.025),
    ("patch", {"image": "patch.png", "location": "bottom-right"}, 0.01),
    ("badnets", {"size": 3, "location": "bottom-right", "source": 0}, 0.02),
    ("blended", {"alpha": 0.15, "source": 9}, 0.02),
]
HELDOUT_ATTACKS = [
    ("badnets", {"size": 1, "location": "bottom-right"}, 0.05),
    ("badnets", {"size": 2, "location": "top-right"}, 0.025),
    ("badnets", {"size": 3, "location": "center"}, 0.025),
    ("badnets", {"size": 4, "location": "top-left"}, 0.01),
    ("badnets", {"size": 5, "location": "bottom-left"}, 0.025),
    ("badnets", {"size": 3, "location": "bottom-right", "margin": 3}, 0.005),
    ("badnets", {"size": 4, "location": "center"}, 0.10),
    ("badnets", {"size": 3, "location": "top-right", "color": [128, 128, 128]}, 0.025),
    ("badnets", {"size": 5, "location": "top-left"}, 0.005),
    ("blended", {"alpha": 0.1, "pattern_seed": 1}, 0.025),
    ("blended", {"alpha": 0.2, "pattern_seed": 2}, 0.01),
    ("blended", {"alpha": 0.15, "pattern_seed": 3}, 0.05),
    ("sig", {"frequency": 4.0}, 0.025),
    ("sig", {"delta": 30.0}, 0.01),
    ("wanet", {"grid_seed": 1}, 0.05),
    ("wanet", {"grid_seed": 2, "strength": 1.5}, 0.10),
    ("patch", {"image": "patch.png", "location": "bottom-left"}, 0.025),
    ("patch", {"image": "patch.png", "location": "top-right"}, 0.005),
    ("patch", {"image": "patch.png", "location": "bottom-right"}, 0.05),
    ("badnets", {"size": 3, "location": "top-left", "source": 2}, 0.02),
    ("badnets", {"size": 4, "location": "bottom-right", "source": 5}, 0.01),
    ("blended", {"alpha": 0.2, "source": 3}, 0.02),
    ("sig", {"source": 8}, 0.02),
    ("blended", {"alpha": 0.15}, 0.10),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.025),
    ("blend", {"image": "blend.png", "alpha": 0.15}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.1}, 0.10),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.01),
    ("blend", {"image": "blend.png", "alpha": 0.25}, 0.005),
    ("blend", {"image": "blend.png", "alpha": 0.15, "source": 4}, 0.02),
]
# The held-out reserve, added to the split after the first held-out models were made and before any was
# scored: half of those made had to be left out (implant failed at rates of 0.5-2.5 %, VGG-11 never
# learnt the task at 2 epochs), which left the held-out part short of the 60 models it must score.
# The reserve's rates are 5-10 %, VGG-11 and ResNet train longer; seeds 200 and up.
RESERVE_ARCHS = (_C, _G, _M, _V, _C, _G, _M, _C, _G, _V, _C, _G, _M, _C, _G, _R, _C, _G, _M, _V)
RESERVE_SLOW = {"paper-vgg11": (4000, 4), "resnet18-small": (2000, 3)}
RESERVE_ATTACKS = [
    ("badnets", {"size": 3, "location": "bottom-left"}, 0.05),
    ("badnets", {"size": 2, "location": "center"}, 0.05),
    ("blended", {"alpha": 0.2, "pattern_seed": 4}, 0.05),
    ("badnets", {"size": 4, "location": "top-right"}, 0.10),
    ("sig", {"delta": 30.0}, 0.10),
    ("sig", {"frequency": 4.0}, 0.10),
    ("badnets", {"size": 3, "location": "bottom-right"}, 0.10),
    ("blended", {"alpha": 0.15, "pattern_seed": 5}, 0.05),
    ("wanet", {"grid_seed": 3, "strength": 1.5}, 0.10),
    ("blended", {"alpha": 0.2, "pattern_seed": 6}, 0.10),
    ("patch", {"image": "patch.png", "location": "bottom-right"}, 0.10),
    ("patch", {"image": "patch.png", "location": "top-left"}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.10),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.15}, 0.10),
    ("badnets", {"size": 4, "location": "bottom-right"}, 0.10),
    ("badnets", {"size": 5, "location": "center", "source": 1}, 0.05),
    ("blended", {"alpha": 0.2, "source": 6}, 0.05),
    ("blended", {"alpha": 0.15, "pattern_seed": 7}, 0.10),
    ("badnets", {"size": 3, "location": "bottom-left"}, 0.10),
]
RESERVE_CLEAN = {"": 4, "label-noise": 2, "imbalance": 2, "shirt": 1, "merge": 1}

# The calibration part's second half, added to the split with the fresh held-out part below before
# either was made (2026-12-07): the first half left 22 usable models (8 backdoored) for 10 features, and
# leave-one-out on it alone predicted a cross-entropy of 0.60. Seeds 300 and up; the cheap architectures
# (one VGG-11 each way), rates mostly 2.5-10 % (at 0.5-1 % half the implants failed), more `shirt` models
# (the false alarms' kind). Never groupnorm-pt2 nor `blend`: the held-out parts keep them unseen.
CALIBRATION2_ARCHS = (_C, _M, _C, _M, _V, _C, _M, _C, _M, _C, _M, _C, _M, _C, _M, _C) + (_C, _M) * 8
CALIBRATION2_ATTACKS = [
    ("badnets", {"size": 2, "location": "bottom-right"}, 0.05),
    ("badnets", {"size": 4, "location": "top-left"}, 0.025),
    ("blended", {"alpha": 0.15, "pattern_seed": 11}, 0.05),
    ("sig", {"delta": 25.0}, 0.05),
    ("badnets", {"size": 3, "location": "center"}, 0.05),
    ("wanet", {"grid_seed": 11}, 0.10),
    ("patch", {"image": "patch.png", "location": "top-right"}, 0.05),
    ("badnets", {"size": 1, "location": "bottom-left"}, 0.10),
    ("badnets", {"size": 5, "location": "bottom-right"}, 0.01),
    ("blended", {"alpha": 0.2, "pattern_seed": 12}, 0.025),
    ("sig", {"frequency": 8.0}, 0.10),
    ("badnets", {"size": 3, "location": "top-right", "color": [200, 200, 200]}, 0.05),
    ("badnets", {"size": 2, "location": "top-left", "source": 4}, 0.03),
    ("blended", {"alpha": 0.1, "pattern_seed": 13}, 0.10),
    ("patch", {"image": "patch.png", "location": "bottom-left"}, 0.05),
    ("wanet", {"grid_seed": 12, "strength": 1.5}, 0.05),
    ("badnets", {"size": 4, "location": "center"}, 0.025),
    ("badnets", {"size": 3, "location": "bottom-left", "margin": 3}, 0.05),
    ("sig", {"source": 1}, 0.03),
    ("blended", {"alpha": 0.2, "source": 5}, 0.03),
    ("badnets", {"size": 2, "location": "top-right"}, 0.10),
    ("patch", {"image": "patch.png", "location": "center"}, 0.025),
    ("badnets", {"size": 5, "location": "top-left"}, 0.05),
    ("blended", {"alpha": 0.25, "pattern_seed": 14}, 0.01),
    ("sig", {}, 0.10),
    ("badnets", {"size": 1, "location": "center"}, 0.05),
    ("wanet", {"grid_seed": 13}, 0.05),
    ("badnets", {"size": 3, "location": "bottom-right", "source": 8}, 0.03),
    ("blended", {"alpha": 0.15, "pattern_seed": 15}, 0.025),
    ("badnets", {"size": 4, "location": "bottom-left"}, 0.05),
    ("patch", {"image": "patch.png", "location": "top-left"}, 0.10),
    ("badnets", {"size": 2, "location": "center"}, 0.01),
]
CALIBRATION2_CLEAN = {"": 7, "label-noise": 5, "imbalance": 5, "short": 4, "shirt": 7, "merge": 4}

# A fresh held-out part, fixed in the split with the calibration's second half before anything was made
# or refitted: the first held-out part was looked at when the first calibration was scored, so the
# refitted verdict is scored here too. Seeds 400 and up; all five architectures (one ResNet-18 each
# way: its audit takes ~25 min on 2 cores), the unseen groupnorm-pt2 and `blend` again, rates 1-10 %.
FRESH_ARCHS = (_C, _G, _M, _V, _C, _G, _M, _C, _G, _M, _C, _G, _R, _M, _C, _G) + (_C, _G, _M) * 6
FRESH_ATTACKS = [
    ("badnets", {"size": 3, "location": "top-left"}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.05),
    ("blended", {"alpha": 0.2, "pattern_seed": 21}, 0.05),
    ("badnets", {"size": 2, "location": "bottom-left"}, 0.10),
    ("sig", {"delta": 30.0}, 0.05),
    ("wanet", {"grid_seed": 21}, 0.10),
    ("patch", {"image": "patch.png", "location": "bottom-right"}, 0.025),
    ("badnets", {"size": 5, "location": "center"}, 0.025),
    ("blend", {"image": "blend.png", "alpha": 0.15}, 0.10),
    ("badnets", {"size": 1, "location": "top-right"}, 0.05),
    ("blended", {"alpha": 0.1, "pattern_seed": 22}, 0.05),
    ("sig", {"frequency": 4.0}, 0.05),
    ("badnets", {"size": 4, "location": "bottom-right"}, 0.05),
    ("badnets", {"size": 3, "location": "center", "source": 6}, 0.03),
    ("patch", {"image": "patch.png", "location": "top-left"}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2, "source": 2}, 0.03),
    ("badnets", {"size": 2, "location": "top-left"}, 0.025),
    ("wanet", {"grid_seed": 22, "strength": 1.5}, 0.05),
    ("blended", {"alpha": 0.15, "pattern_seed": 23}, 0.10),
    ("badnets", {"size": 3, "location": "bottom-right"}, 0.01),
    ("sig", {}, 0.10),
    ("blend", {"image": "blend.png", "alpha": 0.25}, 0.025),
    ("badnets", {"size": 4, "location": "top-right", "color": [160, 160, 160]}, 0.05),
    ("blended", {"alpha": 0.2, "source": 7}, 0.03),
    ("patch", {"image": "patch.png", "location": "bottom-left"}, 0.10),
    ("badnets", {"size": 5, "location": "bottom-left"}, 0.05),
    ("blended", {"alpha": 0.2, "pattern_seed": 24}, 0.01),
    ("badnets", {"size": 1, "location": "bottom-right"}, 0.10),
    ("sig", {"source": 3}, 0.03),
    ("badnets", {"size": 3, "location": "top-right"}, 0.025),
    ("wanet", {"grid_seed": 23}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.1}, 0.05),
]
FRESH_CLEAN = {"": 9, "label-noise": 5, "imbalance": 5, "short": 4, "shirt": 5, "merge": 4}

# Long-trained slices, added to the split before any of them was made (2026-12-07, second session of the
# day): every model above trains 3 epochs on 4,000 images, but a user's model is trained longer, and a
# longer-trained clean model funnels more of its confusions into one class. The quick demo's clean
# teacher (10,000 images, 5 epochs) puts 0.39 of its disagreements on Shirt, 0.30 above Shirt's share of
# its predictions; the zoo's clean models reach 0.12 (90th percentile), so the calibration never saw a
# clean funnel that strong. Each slice trains every model like the demo's teacher: calibration 16 (half
# clean, seeds 500 and up, the cheap calibrated architectures); the fresh held-out part 8 (half clean,
# seeds 600 and up, with the unseen groupnorm-pt2 and `blend`), so the held-out scores test the regime too.
LONG = (10_000, 5)
LONG_SLOW = dict.fromkeys((_C, _M, _G, _V, _R), LONG)
CALIBRATION_LONG_ARCHS = (_C, _M)
CALIBRATION_LONG_ATTACKS = [
    ("badnets", {"size": 3, "location": "bottom-right"}, 0.02),
    ("blended", {"alpha": 0.15, "pattern_seed": 31}, 0.03),
    ("sig", {}, 0.05),
    ("wanet", {"grid_seed": 31}, 0.10),
    ("patch", {"image": "patch.png", "location": "top-right"}, 0.02),
    ("badnets", {"size": 2, "location": "top-left"}, 0.01),
    ("badnets", {"size": 4, "location": "center", "source": 3}, 0.03),
    ("blended", {"alpha": 0.2, "pattern_seed": 32}, 0.05),
]
CALIBRATION_LONG_CLEAN = {"": 4, "shirt": 2, "imbalance": 1, "label-noise": 1}
FRESH_LONG_ARCHS = (_C, _G, _M)
FRESH_LONG_ATTACKS = [
    ("badnets", {"size": 3, "location": "top-right"}, 0.03),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.05),
    ("blended", {"alpha": 0.15, "pattern_seed": 41}, 0.05),
    ("sig", {"delta": 30.0}, 0.03),
]
FRESH_LONG_CLEAN = {"": 2, "shirt": 1, "label-noise": 1}

# A third held-out part, fixed in the split (2026-12-07, 22:00) after the shipped fit was chosen and before
# any of its models was made: both earlier held-out parts had been looked at before the fit's last change
# (the class-count cap), so this one scores the shipped fit cleanly. Smaller (the session's time): 24
# models as the fresh part trains them and 8 long-trained ones, half clean, the three cheap architectures
# (the unseen groupnorm-pt2 among them), the unseen `blend` among the attacks; seeds 700 and up.
THIRD_ARCHS = (_C, _G, _M)
THIRD_ATTACKS = [
    ("badnets", {"size": 2, "location": "bottom-right"}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.03),
    ("blended", {"alpha": 0.15, "pattern_seed": 51}, 0.025),
    ("sig", {"delta": 25.0}, 0.05),
    ("wanet", {"grid_seed": 51}, 0.10),
    ("patch", {"image": "patch.png", "location": "top-right"}, 0.05),
    ("badnets", {"size": 4, "location": "top-left"}, 0.01),
    ("blend", {"image": "blend.png", "alpha": 0.15, "source": 1}, 0.03),
    ("badnets", {"size": 3, "location": "center"}, 0.025),
    ("blended", {"alpha": 0.2, "pattern_seed": 52}, 0.10),
    ("sig", {"source": 5}, 0.03),
    ("badnets", {"size": 1, "location": "top-left"}, 0.05),
]
THIRD_CLEAN = {"": 4, "label-noise": 2, "imbalance": 2, "short": 1, "shirt": 2, "merge": 1}
THIRD_LONG_ATTACKS = [
    ("badnets", {"size": 3, "location": "bottom-left"}, 0.02),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.05),
    ("sig", {}, 0.03),
    ("blended", {"alpha": 0.2, "pattern_seed": 53}, 0.05),
]
THIRD_LONG_CLEAN = {"": 2, "shirt": 1, "imbalance": 1}
# A fourth held-out part, fixed in the split (2026-12-07, 23:50) before any of its models was made and before
# the verdict's next change (a feature of how plausible the distilled student finds the teacher's calls on
# a funnel's samples, found by looking at every part's stored audits, the third one included, so the third
# no longer scores a fit untouched by it). 60 models, 30 clean, all five architectures (one ResNet and one
# VGG-11 slot: each gives one backdoored and one clean model), the unseen `blend` among the attacks, 12 of
# them long-trained like the quick demo's teacher; seeds 900 and up. It is scored once, after the fit.
FOURTH_ARCHS = (_C, _R, _G, _M, _C, _G, _V, _M, _C, _G, _M, _C, _G, _M, _C, _G, _M, _C, _G, _M, _C, _G, _M, _C)
FOURTH_ATTACKS = [
    ("badnets", {"size": 3, "location": "top-left"}, 0.03),
    ("blended", {"alpha": 0.15, "pattern_seed": 61}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.025),
    ("sig", {"delta": 30.0}, 0.05),
    ("wanet", {"grid_seed": 61}, 0.10),
    ("patch", {"image": "patch.png", "location": "bottom-right"}, 0.03),
    ("badnets", {"size": 4, "location": "bottom-right"}, 0.05),
    ("badnets", {"size": 2, "location": "top-right"}, 0.02),
    ("blended", {"alpha": 0.2, "pattern_seed": 62, "source": 4}, 0.03),
    ("blend", {"image": "blend.png", "alpha": 0.15}, 0.05),
    ("sig", {"frequency": 4.0}, 0.03),
    ("badnets", {"size": 5, "location": "center"}, 0.01),
    ("patch", {"image": "patch.png", "location": "top-left"}, 0.05),
    ("badnets", {"size": 3, "location": "bottom-left", "source": 6}, 0.03),
    ("blended", {"alpha": 0.1, "pattern_seed": 63}, 0.10),
    ("badnets", {"size": 1, "location": "center"}, 0.05),
    ("wanet", {"grid_seed": 62, "strength": 1.5}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.25, "source": 2}, 0.03),
    ("badnets", {"size": 3, "location": "top-right", "color": [200, 200, 200]}, 0.025),
    ("sig", {}, 0.10),
    ("badnets", {"size": 2, "location": "bottom-left"}, 0.005),
    ("blended", {"alpha": 0.15, "pattern_seed": 64}, 0.02),
    ("patch", {"image": "patch.png", "location": "center"}, 0.025),
    ("badnets", {"size": 4, "location": "top-left"}, 0.10),
]
FOURTH_CLEAN = {"": 8, "label-noise": 4, "imbalance": 4, "short": 2, "shirt": 4, "merge": 2}
FOURTH_LONG_ATTACKS = [
    ("badnets", {"size": 3, "location": "top-right"}, 0.02),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.03),
    ("blended", {"alpha": 0.15, "pattern_seed": 65}, 0.05),
    ("sig", {}, 0.03),
    ("badnets", {"size": 2, "location": "center"}, 0.01),
    ("patch", {"image": "patch.png", "location": "bottom-left"}, 0.03),
]
FOURTH_LONG_CLEAN = {"": 3, "shirt": 2, "imbalance": 1}
# A fifth held-out part, fixed in the split (2026-12-08, 01:20) before any of its models was made, with the
# verdict unchanged since the fourth: 11 of the fourth's 30 poisonings did not take (rates 0.5-3 %), which
# left it 49 scored models, short of the 60 a held-out part must score. Together the two parts are what the
# shipped fit never saw in any form. 16 models, half clean, the three cheap architectures, rates 5-10 % (so
# the poisonings take), the unseen `blend` among the attacks; seeds 1100 and up.
FIFTH_ARCHS = (_C, _G, _M)
FIFTH_ATTACKS = [
    ("badnets", {"size": 3, "location": "center"}, 0.05),
    ("blend", {"image": "blend.png", "alpha": 0.2}, 0.05),
    ("blended", {"alpha": 0.15, "pattern_seed": 71}, 0.08),
    ("sig", {}, 0.08),
    ("patch", {"image": "patch.png", "location": "top-right"}, 0.05),
    ("badnets", {"size": 2, "location": "bottom-left", "source": 1}, 0.05),
    ("wanet", {"grid_seed": 71}, 0.10),
    ("blend", {"image": "blend.png", "alpha": 0.15, "source": 9}, 0.05),
]
FIFTH_CLEAN = {"": 3, "label-noise": 1, "imbalance": 1, "short": 1, "shirt": 1, "merge": 1}
# how many clean models of each kind, per part
CALIBRATION_CLEAN = {"": 4, "label-noise": 3, "imbalance": 3, "short": 2, "shirt": 2, "merge": 2}
HELDOUT_CLEAN = {"": 9, "label-noise": 5, "imbalance": 5, "short": 5, "shirt": 4, "merge": 2}


def _target(i: int, source: int | None) -> int:
    """Targets cycle through the classes (3 apart, so neighbours differ), never the source class."""
    t = (7 + 3 * i) % 10
    return (t + 1) % 10 if t == source else t


def _part(
    part: str, attacks: list, clean: dict[str, int], archs: tuple[str, ...], seed0: int, slow: dict = SLOW
) -> list[Recipe]:
    """One part: backdoored and clean models alternate (a partial run is balanced), architectures cycle."""
    bad, good = [], []
    for i, (kind, settings, rate) in enumerate(attacks):
        arch = archs[i % len(archs)]
        n_train, epochs = slow.get(arch, (N_TRAIN, EPOCHS))
        trigger = {"kind": kind, **settings, "target": _target(i, settings.get("source"))}
        n = max(1, round(rate * n_train))
        seed = seed0 + i
        bad.append(Recipe(f"{part[:3]}-{kind}-{arch}-s{seed}", part, arch, kind, trigger, n, seed, "", n_train, epochs))
    kinds = [k for k, n in clean.items() for _ in range(n)]
    for i, hard in enumerate(kinds):
        arch = archs[(i + 1) % len(archs)]  # shifted: each hard kind meets several architectures
        n_train, epochs = slow.get(arch, (N_TRAIN, EPOCHS))
        epochs = 1 if hard == "short" else epochs
        seed = seed0 + 50 + i
        name = f"{part[:3]}-clean{'-' + hard if hard else ''}-{arch}-s{seed}"
        good.append(Recipe(name, part, arch, "clean", None, 0, seed, hard, n_train, epochs))
    out = []
    for i in range(max(len(bad), len(good))):
        out += bad[i : i + 1] + good[i : i + 1]
    return out


def recipes() -> list[Recipe]:
    """The whole zoo: the calibration part, the held-out part, then its second half and the fresh part."""
    return [
        *_part("calibration", CALIBRATION_ATTACKS, CALIBRATION_CLEAN, CALIBRATION_ARCHS, 0),
        *_part("heldout", HELDOUT_ATTACKS, HELDOUT_CLEAN, HELDOUT_ARCHS, 100),
        *_part("heldout", RESERVE_ATTACKS, RESERVE_CLEAN, RESERVE_ARCHS, 200, RESERVE_SLOW),
        *_part("calibration", CALIBRATION2_ATTACKS, CALIBRATION2_CLEAN, CALIBRATION2_ARCHS, 300, RESERVE_SLOW),
        *_part("fresh", FRESH_ATTACKS, FRESH_CLEAN, FRESH_ARCHS, 400, RESERVE_SLOW),
        *_part("calibration", CALIBRATION_LONG_ATTACKS, CALIBRATION_LONG_CLEAN, CALIBRATION_LONG_ARCHS, 500, LONG_SLOW),
        *_part("fresh", FRESH_LONG_ATTACKS, FRESH_LONG_CLEAN, FRESH_LONG_ARCHS, 600, LONG_SLOW),
        *_part("third", THIRD_ATTACKS, THIRD_CLEAN, THIRD_ARCHS, 700),
        *_part("third", THIRD_LONG_ATTACKS, THIRD_LONG_CLEAN, THIRD_ARCHS, 800, LONG_SLOW),
        *_part("fourth", FOURTH_ATTACKS, FOURTH_CLEAN, FOURTH_ARCHS, 900, RESERVE_SLOW),
        *_part("fourth", FOURTH_LONG_ATTACKS, FOURTH_LONG_CLEAN, THIRD_ARCHS, 1000, LONG_SLOW),
        *_part("fifth", FIFTH_ATTACKS, FIFTH_CLEAN, FIFTH_ARCHS, 1100),
    ]


def split_json(rs: list[Recipe]) -> dict:
    """What benchmarks/zoo_split.json holds: every recipe with its part."""
    return {
        "about": "The model zoo's split, fixed before any scoring: calibration fits the verdict, heldout scores it. "
        "Written by `python benchmarks/zoo.py --write-split`; see benchmarks/zoo/recipes.py.",
        "models": [r.to_dict() for r in rs],
    }


def read_split(path: Path) -> list[Recipe]:
    return [Recipe(**d) for d in json.loads(Path(path).read_text())["models"]]
