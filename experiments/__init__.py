"""The studies. A package only so that pytest imports experiments/conftest.py as `experiments.conftest`, apart from
tests/conftest.py, whose helpers the unit tests import as `conftest`."""
