"""The suite's own bookkeeping: conftest's scheduler groups every module that uses a session-trained model."""

from pathlib import Path

from conftest import TRAINED_MODEL_MODULES

TRAINED_MODEL_FIXTURES = ("overfit_tiny", "photo_tiny")
ROOT = Path(__file__).resolve().parents[1]


def modules_naming_a_trained_model() -> set[str]:
    """The test modules whose text names a trained-model fixture (a local fixture built on one names it too)."""
    return {
        f"{path.relative_to(ROOT).as_posix()}::"
        for path in (ROOT / "tests").rglob("test_*.py")
        if path.name != Path(__file__).name and any(name in path.read_text() for name in TRAINED_MODEL_FIXTURES)
    }


def test_trained_model_modules_is_the_set_of_modules_that_use_a_trained_model(request):
    assert modules_naming_a_trained_model() == set(TRAINED_MODEL_MODULES)
    # and, among the tests collected in this run, every one whose fixture closure holds a trained model is grouped
    collected = {
        item.nodeid.split("::")[0] + "::"
        for item in request.session.items
        if set(TRAINED_MODEL_FIXTURES) & set(getattr(item, "fixturenames", ()))
    }
    assert collected <= set(TRAINED_MODEL_MODULES)
