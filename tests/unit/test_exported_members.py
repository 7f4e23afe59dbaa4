"""The public API of each package is exactly its ``__all__``."""

from __future__ import annotations

import types

import pytest

import tms_client
import tms_server

PACKAGES = [tms_client, tms_server]


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_every_name_in_all_exists(package: types.ModuleType) -> None:
    assert package.__all__ == sorted(set(package.__all__))
    for name in package.__all__:
        assert hasattr(package, name), f"{package.__name__}.{name} is in __all__ but missing"


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_every_public_member_of_the_package_is_in_all(package: types.ModuleType) -> None:
    public = {
        name
        for name, value in vars(package).items()
        if not name.startswith("_")
        and getattr(value, "__module__", "").startswith(package.__name__ + ".")
    }
    assert public
    assert public - set(package.__all__) == set()


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_the_version_is_exported(package: types.ModuleType) -> None:
    assert "__version__" in package.__all__
    assert isinstance(package.__version__, str)
    assert package.__version__.count(".") >= 1


@pytest.mark.parametrize("package", PACKAGES, ids=lambda package: package.__name__)
def test_exported_classes_and_functions_come_from_the_package(package: types.ModuleType) -> None:
    for name in package.__all__:
        value = getattr(package, name)
        if isinstance(value, (type, types.FunctionType)):
            assert value.__module__.startswith(package.__name__ + "."), name
