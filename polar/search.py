"""Monte-Carlo tree search over programs of layers (the PoLar labeling search).

The tree starts at the full-depth program. Actions edit a program: skip a run of consecutive
positions, or repeat a contiguous block right after itself. At the root a run or block spans 1 to
``root_block`` positions; deeper nodes make single-position edits. A program is admissible when no
layer runs more than ``max_visits`` times and its length lies within ``[min_length_ratio * D,
max_length_ratio * D]``. Each simulation selects a node by UCB, adds one child and evaluates it:

    UCB(child) = mean_reward - length_penalty * len(child) / D + sqrt(exploration * ln(N_parent + 1) / n_child)

with a ``random_select`` chance of a uniformly random child instead. Nodes grow children by
progressive widening (at most ``widen_c * n ** widen_alpha`` children after ``n`` visits), so that a
budget of 100 simulations goes deeper than the root's hundreds of actions. A program reached by two
paths (a skip then a repeat can undo each other) enters the tree once, so every simulation evaluates a
new program and the tree is finite. Rewards come from an
evaluator that runs each program alone on the model; simulations are evaluated ``batch`` at a time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

from polar.programs import Program
from polar.settings import SearchConfig

__all__ = ["Evaluation", "SearchResult", "child_programs", "search"]


@dataclass(frozen=True)
class Evaluation:
    """What running one program alone produced."""

    program: str
    reward: float  # 1.0 when the answer is correct
    length: int
    prediction: str | None = None  # the extracted answer
    text: str | None = None  # the generated text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SearchResult:
    base: Evaluation  # the full-depth program
    evaluations: list[Evaluation]  # every program evaluated, in order, base first
    simulations: int

    @property
    def valid(self) -> list[Evaluation]:
        return [e for e in self.evaluations if e.reward > 0]

    @property
    def shortest(self) -> Evaluation | None:
        """The shortest valid program (ties: the first found)."""
        return min(self.valid, key=lambda e: e.length, default=None)


@dataclass(eq=False)
class _Node:
    program: Program
    parent: _Node | None
    depth_in_tree: int
    children: list[_Node] = field(default_factory=list)
    untried: list[Program] | None = None  # built on first expansion
    n: int = 0
    total: float = 0.0
    exhausted: bool = False


def child_programs(program: Program, depth: int, config: SearchConfig, root: bool) -> list[Program]:
    """Admissible one-edit children of ``program``, without duplicates, in a deterministic order."""
    layers, lo_hi = program.layers, config.bounds(depth)
    span = config.root_block if root else 1
    seen: set[tuple[int, ...]] = {layers}
    out: list[Program] = []
    for k in range(1, span + 1):
        for p in range(len(layers) - k + 1):
            candidates = []
            if config.space in ("skip", "joint"):
                candidates.append(layers[:p] + layers[p + k :])
            if config.space in ("loop", "joint"):
                candidates.append(layers[: p + k] + layers[p : p + k] + layers[p + k :])
            for cand in candidates:
                if cand in seen or not lo_hi[0] <= len(cand) <= lo_hi[1]:
                    continue
                if max(cand.count(i) for i in set(layers[p : p + k])) > config.max_visits:
                    continue
                seen.add(cand)
                out.append(Program(cand))
    return out


def search(
    depth: int,
    evaluate: Callable[[Sequence[Program]], list[Evaluation]],
    config: SearchConfig = SearchConfig(),
    on_batch: Callable[[int], None] | None = None,
) -> SearchResult:
    """Search programs for one input.

    Args:
        depth: layers of the model.
        evaluate: runs programs (each as if alone) and returns one Evaluation per program, in order.
        config: search settings.
        on_batch: called with the number of simulations done after each evaluated batch (progress).
    """
    rng = random.Random(config.seed)
    root = _Node(Program.identity(depth), None, 0)
    cache: dict[tuple[int, ...], Evaluation] = {}
    order: list[Evaluation] = []

    def run(programs: list[Program]) -> None:
        todo = list({p.layers: p for p in programs if p.layers not in cache}.values())
        if todo:
            for program, ev in zip(todo, evaluate(todo), strict=True):
                cache[program.layers] = ev
                order.append(ev)

    seen = {root.program.layers}  # every program in the tree appears once (no transpositions)
    run([root.program])
    base = cache[root.program.layers]
    _backprop(root, base.reward)
    done = 0
    while done < config.simulations:
        batch: list[_Node] = []
        while len(batch) < min(config.batch, config.simulations - done):
            leaf = _select(root, depth, config, rng, seen)
            if leaf is None:
                break
            batch.append(leaf)
        if not batch:
            break  # every admissible program has been expanded
        run([node.program for node in batch])
        for node in batch:
            _backprop(node, cache[node.program.layers].reward)
        done += len(batch)
        if on_batch is not None:
            on_batch(done)
    return SearchResult(base=base, evaluations=order, simulations=done)


def _select(
    root: _Node, depth: int, config: SearchConfig, rng: random.Random, seen: set[tuple[int, ...]]
) -> _Node | None:
    """Walk down by UCB to a node that may grow, add one child to it and return the child.

    Returns None when nothing can be added before the pending children of this batch are evaluated,
    or when the whole tree is exhausted.
    """
    node = root
    while True:
        if node.untried is None:
            node.untried = child_programs(node.program, depth, config, root=node is root)
            rng.shuffle(node.untried)
        while node.untried and node.untried[-1].layers in seen:  # reached by another path already
            node.untried.pop()
        ready = [c for c in node.children if not c.exhausted and c.n > 0]  # n == 0: awaiting its reward
        may_widen = len(node.children) < config.widen_c * max(node.n, 1) ** config.widen_alpha
        if node.untried and (may_widen or not ready):
            child = _Node(node.untried.pop(), node, node.depth_in_tree + 1)
            node.children.append(child)
            seen.add(child.program.layers)
            return child
        if not ready:
            if any(c.n == 0 for c in node.children):
                return None  # wait for this batch's rewards
            node.exhausted = True
            if node is root:
                return None
            node = root  # this branch is finished: start again from the top
            continue
        if rng.random() < config.random_select:
            node = rng.choice(ready)
        else:
            node = max(ready, key=lambda c: _ucb(c, node.n, depth, config))


def _ucb(child: _Node, parent_n: int, depth: int, config: SearchConfig) -> float:
    mean = child.total / child.n
    penalty = config.length_penalty * len(child.program) / depth
    return mean - penalty + math.sqrt(config.exploration * math.log(parent_n + 1) / child.n)


def _backprop(node: _Node | None, reward: float) -> None:
    while node is not None:
        node.n += 1
        node.total += reward
        node = node.parent
