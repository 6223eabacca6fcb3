"""kdcore.config (strict from_dict / JSON-ready to_dict) and the validation of the run configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kdcore.config import from_dict, merge, nest, settings, to_dict
from kdcore.distill import DistillConfig
from kdcore.errors import ConfigError
from kdcore.pipeline import KDConfig
from kdcore.runs import KINDS, AuditConfig, AuditManyConfig, DefendConfig, DemoConfig, RefineConfig, SweepConfig
from kdcore.train import TrainConfig
from kdcore.triggers import SIG, Blended

AUDIT = {"model": "suspect.safetensors", "unlabeled": "clean.zip"}

# One non-default instance of every run kind's config (the round-trip test fails if a kind is missing).
EXAMPLES = {
    "demo": DemoConfig(n_train=20_000, n_poison=50, teacher=TrainConfig(epochs=2, optimizer="sgd")),
    "audit": AuditConfig(
        **AUDIT,
        arch="paper-cnn",
        num_classes=10,
        input_shape=(1, 28, 28),
        mean=(0.5,),
        std=(0.25,),
        trigger=Blended(target=2, alpha=0.2).to_dict(),
        kd=KDConfig(student_arch="paper-vgg11"),
    ),
    "audit_many": AuditManyConfig(
        models=("a.onnx", "b.pt2"), audit={"unlabeled": "clean.zip", "test": "test.zip", "seed": 3}, device="cpu"
    ),
    "sweep": SweepConfig(setup=DemoConfig(n_train=30_000), budgets=(100, 200), scenarios=("attack",), seeds=(1, 2)),
    "refine": RefineConfig(
        source_run="runs/job-00001-audit", verdicts=((3, "poison"), (7, "clean")), finetune=TrainConfig(epochs=2)
    ),
    "defend": DefendConfig(
        method="neural-cleanse",
        params={"steps": 50, "n_images": 100},
        demo=DemoConfig(n_poison=50, trigger=SIG(target=3).to_dict()),
        seed=2,
    ),
}


def test_nested_from_dict_builds_nested_types() -> None:
    cfg = from_dict(DemoConfig, {"kd": {"distill": {"epochs": 3}}, "teacher": {"lr": 0.01}})
    assert isinstance(cfg.kd, KDConfig) and isinstance(cfg.kd.distill, DistillConfig)
    assert cfg.kd.distill.epochs == 3
    assert cfg.kd.distill.temperature == DistillConfig().temperature  # the rest keeps its defaults
    assert isinstance(cfg.kd.finetune, TrainConfig) and cfg.kd.finetune == KDConfig().finetune
    assert isinstance(cfg.teacher, TrainConfig) and cfg.teacher.lr == 0.01 and cfg.teacher.epochs == 8


def test_from_dict_lists_become_tuples_and_none_gives_defaults() -> None:
    cfg = from_dict(SweepConfig, {"budgets": [100, 300], "seeds": [0, 1]})
    assert cfg.budgets == (100, 300) and cfg.seeds == (0, 1)
    assert from_dict(DemoConfig, None) == DemoConfig()
    assert from_dict(DemoConfig, EXAMPLES["demo"]) is EXAMPLES["demo"]


@pytest.mark.parametrize(
    ("d", "where", "key"),
    [
        ({"n_trian": 100}, "DemoConfig", "n_trian"),
        ({"kd": {"distil": {}}}, "DemoConfig.kd", "distil"),
        ({"kd": {"distill": {"epoch": 3}}}, "DemoConfig.kd.distill", "epoch"),
        ({"teacher": {"learning_rate": 0.1}}, "DemoConfig.teacher", "learning_rate"),
    ],
)
def test_unknown_keys_are_named(d: dict, where: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"Unknown key\(s\) \['{key}'\] in {where};"):
        from_dict(DemoConfig, d)


def test_non_mapping_is_an_error() -> None:
    with pytest.raises(ConfigError, match="should be a mapping"):
        from_dict(DemoConfig, [1, 2])


def test_every_run_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_to_dict_round_trip(kind: str) -> None:
    cls, _ = KINDS[kind]
    cfg = EXAMPLES[kind]
    d = to_dict(cfg)
    again = from_dict(cls, json.loads(json.dumps(d)))  # config.json is JSON
    assert again == cfg
    assert to_dict(again) == d
    required = {
        "audit": AUDIT,
        "audit_many": {"models": ("a.onnx",), "audit": {"unlabeled": "clean.zip"}},
        "refine": {"source_run": "runs/job-00001-audit"},
        "defend": {"method": "bcu", "source_run": "runs/job-00001-audit"},
    }
    defaults = cls(**required.get(kind, {}))
    assert from_dict(cls, to_dict(defaults)) == defaults != cfg


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: TrainConfig(optimizer="rmsprop"), "rmsprop"),
        (lambda: TrainConfig(val_fraction=0.5), "val_fraction"),
        (lambda: DistillConfig(temperature=0), "temperature"),
        (lambda: DistillConfig(holdout_fraction=-0.1), "holdout_fraction"),
        (lambda: DemoConfig(n_clean=10_001), "n_clean"),
        (lambda: DemoConfig(n_poison=25_001), "n_poison"),
        (lambda: DemoConfig(trigger={"kind": "badnets", "target": 10}), "target class 10"),
        (lambda: SweepConfig(scenarios=("attack", "fishing")), "fishing"),
        (lambda: SweepConfig(budgets=(10_001,)), "budget"),
        (lambda: SweepConfig(seeds=()), "seeds"),
        (lambda: AuditConfig(unlabeled="clean.zip"), "--model"),
        (lambda: AuditConfig(model="m.pt"), "--unlabeled"),
        (lambda: AuditConfig(**AUDIT, arch="paper-cnn"), "together"),
        (lambda: AuditConfig(**AUDIT, trigger={"kind": "nope"}), "Unknown trigger kind"),
        (lambda: from_dict(TrainConfig, {"epochs": "three"}), "Bad values for TrainConfig"),
        (lambda: from_dict(DemoConfig, {"kd": {"distill": {"temperature": 0}}}), "temperature"),
    ],
)
def test_invalid_values(build, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()


@pytest.mark.parametrize("d", [{"teacher": 5}, {"kd": None}, {"kd": "fast"}])
def test_non_mapping_for_nested_config_is_an_error(d: dict) -> None:
    with pytest.raises(ConfigError):
        from_dict(DemoConfig, d)


def test_quick_preset_is_smaller() -> None:
    quick, full = DemoConfig.preset(quick=True), DemoConfig.preset()
    assert full == DemoConfig()
    assert quick.quick and not full.quick
    for name in ("n_train", "n_clean", "n_test"):
        assert getattr(quick, name) < getattr(full, name), name
    assert quick.teacher.epochs < full.teacher.epochs
    assert quick.kd.distill.epochs < full.kd.distill.epochs
    assert quick.kd.finetune.epochs <= full.kd.finetune.epochs
    assert DemoConfig.preset(quick=True, seed=3, n_poison=None).seed == 3
    assert max(SweepConfig.preset(quick=True).budgets) < max(SweepConfig.preset().budgets)


# ---- merging into defaults, choices, bounds, the settings the CLI and the forms are built from ----


def test_partial_nested_override_keeps_the_field_defaults() -> None:
    """KDConfig.finetune's default is not TrainConfig(): setting one value keeps the others."""
    ft = from_dict(KDConfig, {"finetune": {"epochs": 3}}).finetune
    assert ft == dataclasses.replace(KDConfig().finetune, epochs=3) != TrainConfig(epochs=3)
    assert (ft.lr, ft.val_fraction, ft.patience) == (1e-4, 0.1, 2)
    deep = from_dict(DemoConfig, {"kd": {"finetune": {"lr": 0.01}}}).kd.finetune
    assert deep == dataclasses.replace(KDConfig().finetune, lr=0.01)
    refine = from_dict(RefineConfig, {"source_run": "r", "finetune": {"epochs": 1}})
    assert refine.finetune == dataclasses.replace(RefineConfig(source_run="r").finetune, epochs=1)


def test_from_dict_merges_into_a_base_instance() -> None:
    quick = DemoConfig.preset(quick=True)
    cfg = from_dict(DemoConfig, {"seed": 4, "kd": {"distill": {"temperature": 5.0}}}, base=quick)
    assert cfg == dataclasses.replace(
        quick, seed=4, kd=dataclasses.replace(quick.kd, distill=dataclasses.replace(quick.kd.distill, temperature=5.0))
    )
    assert from_dict(DemoConfig, None, base=quick) is quick
    # The quick preset restates nothing: what it leaves alone is the full demo's default.
    assert quick.kd.finetune == dataclasses.replace(DemoConfig().kd.finetune, epochs=3)


@pytest.mark.parametrize(
    ("cls", "d", "match"),
    [
        (TrainConfig, {"optimizer": "rmsprop"}, r"TrainConfig.optimizer must be one of 'adam', 'sgd'; got 'rmsprop'"),
        (DemoConfig, {"kd": {"finetune": {"optimizer": "x"}}}, r"DemoConfig.kd.finetune.optimizer must be one of"),
        (DistillConfig, {"epochs": 0}, r"DistillConfig.epochs must be ≥ 1; got 0"),
        (TrainConfig, {"patience": -1}, r"TrainConfig.patience must be ≥ 0"),
    ],
)
def test_choices_and_bounds_are_checked_with_the_allowed_values(cls, d: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        from_dict(cls, d)


def test_defense_literals_are_checked_by_name() -> None:
    from kdcore.defenses import BCU

    with pytest.raises(ConfigError, match=r"bcu.schedule must be one of 'adaptive', 'uniform'; got 'cubic'"):
        BCU.from_params({"schedule": "cubic"})


def _config_classes() -> list[type]:
    from kdcore.defenses import DEFENSES

    return [DistillConfig, TrainConfig, KDConfig, *(cls for cls, _ in KINDS.values())] + [
        d.config_class for d in DEFENSES.values()
    ]


@pytest.mark.parametrize("cls", _config_classes(), ids=lambda c: c.__name__)
def test_every_setting_has_help_and_a_valid_default(cls) -> None:
    for s in settings(cls):
        assert s.help, f"{cls.__name__}.{s.name} has no help text"
        if s.choices:
            assert s.default in s.choices, s
        if s.min is not None:
            assert s.default >= s.min, s


def test_settings_flatten_nested_configs_with_their_own_defaults() -> None:
    by_name = {s.name: s for s in settings(KDConfig)}
    assert by_name["finetune.epochs"].default == 5 and by_name["finetune.lr"].default == 1e-4
    assert by_name["finetune.optimizer"].kind == "choice" and by_name["finetune.optimizer"].choices == ("adam", "sgd")
    assert by_name["distill.temperature"].kind == "float" and "paper: 20" in by_name["distill.temperature"].help
    assert by_name["distill.augment"].kind == "bool" and by_name["distill.epochs"].min == 1
    assert {s.name for s in settings(DistillConfig)} == {f.name for f in dataclasses.fields(DistillConfig)}
    assert nest({"a.b": 1, "a.c": 2, "d": 3}) == {"a": {"b": 1, "c": 2}, "d": 3}
    assert merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}
