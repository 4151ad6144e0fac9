"""Property tests of every parser: hostile bytes never get past their checks.

Each test drives one fuzz target (fuzz/targets.py, the same code atheris
runs) with inputs that hypothesis generates: arbitrary bytes, and valid
inputs with one edit, which reach further into the parsers. The targets
raise on any broken property; the number of inputs tried goes to the
security figures.
"""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz.seeds import client_seeds, codec_seeds, core_seeds, other_seeds
from fuzz.targets import CODEC_CHECKS
from tests.security_figures import record

EXAMPLES = {
    "codec": 300,
    "register": 300,
    "cookie": 300,
    "client": 300,
    "core": 400,
    "http": 200,
}
SEEDS = {
    "codec": codec_seeds(),
    "core": core_seeds(),
    "client": client_seeds(),
    **other_seeds(),
}
tried: dict[str, int] = {}


def edited(seed: bytes) -> st.SearchStrategy[bytes]:
    """Return the seed with one byte replaced, cut short, or with bytes added."""
    if not seed:
        return st.binary(max_size=64)
    positions = st.integers(0, len(seed) - 1)
    replaced = st.tuples(positions, st.integers(0, 255)).map(
        lambda edit: seed[: edit[0]] + bytes((edit[1],)) + seed[edit[0] + 1 :]
    )
    cut = positions.map(lambda end: seed[:end])
    inserted = st.tuples(positions, st.binary(min_size=1, max_size=8)).map(
        lambda edit: seed[: edit[0]] + edit[1] + seed[edit[0] :]
    )
    appended = st.binary(min_size=1, max_size=64).map(lambda tail: seed + tail)
    return st.one_of(replaced, cut, inserted, appended)


def inputs_for(target: str) -> st.SearchStrategy[bytes]:
    seeds = list(SEEDS[target].values())
    return st.one_of(
        st.binary(max_size=512),
        st.sampled_from(seeds).flatmap(edited),
    )


def run_target(target, name: str, strategy: st.SearchStrategy[bytes]) -> int:
    """Feed the target every input hypothesis draws; return how many there were."""
    count = 0

    @settings(
        max_examples=EXAMPLES.get(name, 200),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy)
    def feed(data: bytes) -> None:
        nonlocal count
        count += 1
        target(data)

    feed()
    return count


@pytest.fixture(scope="module", autouse=True)
def record_inputs_tried():
    yield
    record(
        "hypothesis", {"inputs_by_target": dict(tried), "inputs": sum(tried.values())}
    )


@pytest.mark.parametrize("decoder", [name for name, _ in CODEC_CHECKS])
def test_codec_decoder_rejects_hostile_bytes(build_target, decoder):
    target = build_target("codec")
    selector = bytes(([name for name, _ in CODEC_CHECKS].index(decoder),))
    seed = SEEDS["codec"][decoder][1:]
    strategy = st.one_of(st.binary(max_size=512), edited(seed)).map(
        lambda body: selector + body
    )
    count = run_target(target, "codec", strategy)
    tried[f"codec.{decoder}"] = count
    assert count > 0


@pytest.mark.parametrize(
    "name", ["register", "cookie", "config", "client", "core", "http"]
)
def test_parser_target_survives_hostile_inputs(build_target, name):
    count = run_target(build_target(name), name, inputs_for(name))
    tried[name] = count
    assert count > 0
