"""The public API of ``cuhouse`` carries type hints (the package ships ``py.typed``): every
parameter and every return of its public functions, classes, methods and properties is annotated,
in ``cuhouse`` and, where torch is installed, in ``cuhouse.torch``."""

import inspect

import pytest

import cuhouse

MODULES = [cuhouse]
try:
    import cuhouse.torch

    MODULES.append(cuhouse.torch)
except ImportError:  # torch is an optional extra
    pass


def _public_callables():
    """``(name, function)`` of every public function, and of every public method, property and
    constructor that a public class defines or inherits from another cuhouse class."""
    found = []
    for module in MODULES:
        for name in module.__all__:
            obj = getattr(module, name)
            qualified = "{}.{}".format(module.__name__, name)
            if not inspect.isclass(obj):
                found.append((qualified, obj))
                continue
            for klass in obj.__mro__:
                if not klass.__module__.startswith("cuhouse"):
                    continue
                for attr, value in vars(klass).items():
                    if attr.startswith("_") and attr != "__init__":
                        continue
                    if isinstance(value, property):
                        found.append(("{}.{}".format(qualified, attr), value.fget))
                    elif isinstance(value, (classmethod, staticmethod)):
                        found.append(("{}.{}".format(qualified, attr), value.__func__))
                    elif inspect.isfunction(value):
                        found.append(("{}.{}".format(qualified, attr), value))
    return sorted(dict(found).items())


PUBLIC = _public_callables()


@pytest.mark.parametrize("name, function", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_signature_is_annotated(name, function):
    signature = inspect.signature(function)
    missing = [
        p.name
        for i, p in enumerate(signature.parameters.values())
        if p.annotation is inspect.Parameter.empty and not (i == 0 and p.name in ("self", "cls"))
    ]
    assert not missing, "{}: parameters without a type hint: {}".format(name, ", ".join(missing))
    assert signature.return_annotation is not inspect.Signature.empty, "{}: no return type hint".format(name)
