import pytest

from fuzz.targets import TARGETS, close_target


@pytest.fixture(scope="module")
def build_target():
    """Build fuzz targets once per module and close them afterwards."""
    built: dict[str, object] = {}

    def build(name: str):
        if name not in built:
            built[name] = TARGETS[name]()
        return built[name]

    yield build
    for target in built.values():
        close_target(target)
