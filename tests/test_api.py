"""The top-level Python API: every exported name resolves, and keeps resolving."""

import importlib
import pkgutil

import bigcos


def test_every_public_name_resolves_twice():
    for name in bigcos.__all__:
        first = getattr(bigcos, name)
        # importing every submodule must not rebind a public name to a module
        for info in pkgutil.walk_packages(bigcos.__path__, "bigcos."):
            if info.name.startswith("bigcos.bench") or info.name == "bigcos.__main__":
                continue
            importlib.import_module(info.name)
        second = getattr(bigcos, name)
        assert first is second, name
        if name != "__version__":
            assert not isinstance(second, type(bigcos)), f"bigcos.{name} is a module"


def test_functions_are_callable_after_submodule_import():
    import bigcos.figures  # noqa: F401
    import bigcos.neighbor_lists  # noqa: F401
    import bigcos.simulator  # noqa: F401

    for name in ("simulate", "figure1", "neighbors", "fit", "fit_als", "run_job"):
        assert callable(getattr(bigcos, name)), name
        assert callable(getattr(bigcos, name)), name


def test_no_public_name_shadows_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(bigcos.__path__)}
    assert not submodules & set(bigcos.__all__)
