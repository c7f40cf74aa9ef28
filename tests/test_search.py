import pytest

from polar.programs import Program
from polar.search import Evaluation, child_programs, search
from polar.settings import SearchConfig

D = 12


def test_children_respect_the_space_bounds_and_visit_limit():
    full = Program.identity(D)
    cfg = SearchConfig(space="skip")
    kids = child_programs(full, D, cfg, root=True)
    assert kids and all(len(k) < D for k in kids)
    assert min(len(k) for k in kids) == D - 4  # root skips span up to 4 positions
    cfg = SearchConfig(space="loop")
    kids = child_programs(full, D, cfg, root=True)
    assert kids and all(len(k) > D for k in kids)
    assert all(max(k.visits().values()) <= 2 for k in kids)
    assert all(len(k) <= cfg.bounds(D)[1] for k in kids)
    deeper = child_programs(Program.parse("0-5,5-11"), D, SearchConfig(space="joint"), root=False)
    assert all(abs(len(k) - 13) == 1 for k in deeper)  # single-position edits below the root
    assert not any(k.visits()[5] > 2 for k in deeper)
    assert len({k.layers for k in deeper}) == len(deeper)


def test_length_bounds_stop_skipping():
    cfg = SearchConfig(space="skip", min_length_ratio=0.9)
    short = Program(tuple(range(D - 1)))  # 11 >= ceil(0.9 * 12) = 11: no child may be shorter
    assert child_programs(short, D, cfg, root=False) == []


def _needs_layer_4_skipped(programs):
    # A stand-in for a model: the answer is right exactly when layer 4 is skipped.
    return [Evaluation(p.text, float(4 not in p.layers), len(p)) for p in programs]


def test_search_finds_the_programs_that_work():
    result = search(D, _needs_layer_4_skipped, SearchConfig(simulations=60, seed=1))
    assert result.base.reward == 0 and result.base.program == "0-11"
    assert result.valid and all(4 not in Program.parse(e.program).layers for e in result.valid)
    assert result.shortest.length == min(e.length for e in result.valid) < D
    assert len(result.evaluations) == 61
    assert len({e.program for e in result.evaluations}) == len(result.evaluations)  # each program once


@pytest.mark.parametrize("space", ["skip", "loop", "joint"])
def test_search_is_deterministic_by_seed(space):
    cfg = SearchConfig(space=space, simulations=40, seed=3, batch=8)
    a = search(D, _needs_layer_4_skipped, cfg)
    b = search(D, _needs_layer_4_skipped, cfg)
    assert [e.program for e in a.evaluations] == [e.program for e in b.evaluations]
    if space == "loop":
        assert not a.valid  # no loop program skips layer 4


def test_search_stops_when_the_tree_is_exhausted():
    result = search(
        3, _needs_layer_4_skipped, SearchConfig(simulations=500, min_length_ratio=0.6, max_length_ratio=1.4)
    )
    assert result.simulations < 500
    assert len(result.evaluations) == result.simulations + 1  # one new program per simulation


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="search space"):
        SearchConfig(space="prune")
    with pytest.raises(ValueError, match="length bounds"):
        SearchConfig(min_length_ratio=1.2)
