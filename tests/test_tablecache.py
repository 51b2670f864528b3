"""The on-disk table cache of demand models: bit-identical tables, content keys, corrupt files rebuilt."""

import threading
import warnings

import numpy as np
import pytest

from hermes_env.pdgraph import DemandModel, GittinsTable, LinearTokenCost, TokenCost, tablecache
from hermes_env.pdgraph.library import load_template

TEMPLATE = "fact_checking"  # fan-out and a loop: a tenth of a second to build


def build(cost, template=TEMPLATE):
    model = DemandModel(load_template(template), cost)
    assert model.gittins_table.rows  # built or read now, as a run would
    return model


def same_tables(a, b):
    assert a.lattice.dt == b.lattice.dt
    for name in ("copy_pmf", "full_pmf", "after_pmf"):
        assert all(np.array_equal(x, y) for x, y in zip(getattr(a, name), getattr(b, name), strict=True))
    assert a.gittins_table.grids == b.gittins_table.grids and a.gittins_table.rows == b.gittins_table.rows


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(tablecache.ENV_VAR, str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def uncached(cost):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(tablecache.ENV_VAR, "off")
        return build(cost)


def test_tables_read_back_are_those_computed(cache, cost, uncached, monkeypatch):
    same_tables(build(cost), uncached)  # cold: computed and stored
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["gittins", "horizon"]

    def not_again(*args):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(DemandModel, "_tight_horizon", not_again)
    monkeypatch.setattr(GittinsTable, "__init__", not_again)
    same_tables(build(cost), uncached)  # warm: read back, bit for bit


def test_corrupt_truncated_or_foreign_files_are_rebuilt(cache, cost, uncached):
    build(cost)
    files = sorted(cache.iterdir())
    good = {p: p.read_bytes() for p in files}
    horizon, gittins = (next(p for p in files if p.name.startswith(part)) for part in ("horizon", "gittins"))
    gittins.write_bytes(good[gittins][: len(good[gittins]) // 2])  # truncated
    flipped = bytearray(good[horizon])
    flipped[len(flipped) // 2] ^= 0xFF  # one byte changed: the CRC no longer matches
    horizon.write_bytes(bytes(flipped))
    same_tables(build(cost), uncached)
    assert {p: p.read_bytes() for p in files} == good  # rewritten whole
    other = build(cost, "rag")  # another key's file under this key's name is not trusted either
    other_horizon = next(p for p in cache.iterdir() if p.name.startswith("horizon") and p != horizon)
    horizon.write_bytes(other_horizon.read_bytes())
    assert tablecache.load(horizon.name.split("-")[1].removesuffix(".npz"), "horizon") is None
    same_tables(build(cost), uncached)
    assert other.lattice.dt != uncached.lattice.dt
    key = tablecache.table_key(load_template(TEMPLATE), cost, bins=8192, attained_grid=32)
    tablecache.store(key, "horizon", {"dt": np.array("soon")})  # whole, under its key, but not a horizon
    tablecache.store(key, "gittins", {"grid_sizes": np.array([1.5]), "rows": np.zeros(3)})
    same_tables(build(cost), uncached)
    assert tablecache.load(key, "horizon")["dt"] == uncached.lattice.dt  # the model's own key, rewritten


def test_the_key_is_the_content(cost):
    graph = load_template(TEMPLATE)
    key = tablecache.table_key(graph, cost, bins=8192)
    assert key == tablecache.table_key(type(graph).from_dict(graph.to_dict()), cost, bins=8192)
    assert key != tablecache.table_key(graph, cost, bins=4096)
    dearer = TokenCost(overhead=0.008, prefill_per_token=4e-4, decode_per_token=0.004)
    assert key != tablecache.table_key(graph, LinearTokenCost({**cost.per_backend, "llm:llama3-8b": dearer}),
                                       bins=8192)
    spec = graph.to_dict()
    spec["stages"][0]["output_tokens"] = {"dist": "deterministic", "value": 100}
    assert key != tablecache.table_key(type(graph).from_dict(spec), cost, bins=8192)

    class Opaque:  # a cost model that cannot say what it depends on is not cached
        def llm_service_time(self, backend, prompt, output):
            return cost.llm_service_time(backend, prompt, output)

    assert tablecache.table_key(graph, Opaque(), bins=8192) is None


def test_off_writes_nothing_and_an_unwritable_directory_warns_once(tmp_path, monkeypatch, cost, uncached):
    monkeypatch.setenv(tablecache.ENV_VAR, "off")
    same_tables(build(cost), uncached)
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv(tablecache.ENV_VAR, str(blocker / "cache"))
    monkeypatch.setattr(tablecache, "_warned", set())
    with pytest.warns(UserWarning, match="cannot keep PDGraph tables") as caught:
        same_tables(build(cost), uncached)
    assert len(caught) == 1


def test_concurrent_writers_never_expose_a_partial_file(cache):
    arrays = {"rows": np.arange(50_000, dtype=float)}
    seen, stop = [], threading.Event()

    def write():
        for _ in range(30):
            tablecache.store("k", "part", arrays)

    def read():
        while not stop.is_set():
            got = tablecache.load("k", "part")
            seen.append(got is None or np.array_equal(got["rows"], arrays["rows"]))

    writers = [threading.Thread(target=write) for _ in range(3)]
    reader = threading.Thread(target=read)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader.start()
        for t in writers:
            t.start()
        for t in writers:
            t.join()
        stop.set()
        reader.join()
    assert all(seen) and [p.name for p in cache.iterdir()] == ["part-k.npz"]
