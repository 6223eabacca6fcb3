"""New audit's model check says when the parsing sandbox could not restrict file and network access
(a kernel without Landlock), and says nothing more where it could."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from kdcore.sandbox import Confinement


def _model_check(note: str) -> None:
    from pathlib import Path

    from app.model_form import model_check_ui
    from app.uploads import ModelCheck
    from kdcore.models.spec import ModelSpec

    layers = {"conv": [], "linear": [], "problems": {}}
    model_check_ui(ModelCheck(ModelSpec("paper-cnn", 10), 5, 10, layers, note), Path("m.safetensors"))


def test_the_check_warns_when_the_kernel_could_not_confine_the_reader():
    note = Confinement(files=False, network=False, landlock_abi=0).note
    at = AppTest.from_function(_model_check, args=(note,)).run(timeout=60)
    assert not at.exception, at.exception
    assert [w.value for w in at.warning] == [note[0].upper() + note[1:] + "."]
    assert at.warning[0].value.startswith(
        "The parsing sandbox could not restrict file and network access on this kernel"
    )
    confined = AppTest.from_function(_model_check, args=("",)).run(timeout=60)
    assert [s.value for s in confined.success] and not confined.warning
