"""plmforge from Python: what the ``plmforge`` command does, for notebooks and scripts.

    import plmforge

    run = plmforge.train("specs/quickstart.yaml", overrides=["training.steps=50"])
    model = run.load()                                    # or plmforge.load("runs/quickstart")
    vectors = model.embed(["MKTAYIAKQR", "MSDNGPQ"], per_protein=True)   # a [2, d_model] array
    model.evaluate(["localization"], references=["onehot"])
    model.save_pretrained("export/")                      # transformers loads model and tokenizer
    plmforge.compare(run, other_run)                      # as `plmforge compare`

The surface: :class:`Spec`, :func:`train` (returns :class:`Run`), :func:`load` (returns
:class:`Model`), :func:`compare` (returns :class:`Comparison`). Each calls the same functions as the
command line, so results, files, MLflow runs and error messages (:class:`PlmforgeError`) are the same.
See docs/python-api.md.

Importing this package is light: each name is imported from its module on first use (PEP 562), and
nothing imports torch, jax or mlflow until a model is built or a run is tracked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from plmforge.core import __version__
from plmforge.core.errors import PlmforgeError

if TYPE_CHECKING:  # for type checkers and editors; at run time __getattr__ imports on first use
    from plmforge._compare import Comparison, compare
    from plmforge._model import Evaluation, Model, load
    from plmforge._runs import Run, train
    from plmforge._spec import Spec

_EXPORTS = {
    "Spec": "plmforge._spec",
    "train": "plmforge._runs",
    "Run": "plmforge._runs",
    "load": "plmforge._model",
    "Model": "plmforge._model",
    "Evaluation": "plmforge._model",
    "compare": "plmforge._compare",
    "Comparison": "plmforge._compare",
}

__all__ = ["Comparison", "Evaluation", "Model", "PlmforgeError", "Run", "Spec", "__version__", "compare", "load",
           "train"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'plmforge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
