"""training_rows: which rollouts of a step train, with RFT targets and dynamic sampling."""

from __future__ import annotations

import torch

from igpo_agent.learn.batch import training_rows, well_formed
from igpo_agent.rollout.trajectory import Trajectory


def _traj(f1: float, turns: int = 2, ok: bool = True) -> Trajectory:
    t = Trajectory(question="q", answers=["a"], turn_kinds=["search", "answer"][:turns])
    t.format_ok, t.answered = ok, ok
    t.answer_metrics = {"f1": f1}
    return t


def _spans(t: Trajectory, n: int) -> Trajectory:
    from igpo_agent.rollout.trajectory import Span

    t.spans = [Span("action", i, i + 1, i) for i in range(n)]
    return t


def test_off_keeps_every_row_and_its_returns():
    trajs = [_spans(_traj(f), 2) for f in (1.0, 0.0, 0.0, 0.0)]
    returns = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 0.0]])
    out = training_rows(trajs, returns, torch.tensor([1.0, 0, 0, 0]), group_size=2, algo="grpo")
    assert out.rows == [0, 1, 2, 3] and out.kept_groups == 2 and out.signal_groups == 2
    torch.testing.assert_close(out.returns, returns)
    assert out.exclude == [False] * 4 and out.rft_kept == 0


def test_dynamic_sampling_drops_groups_without_contrast_and_caps_the_batch():
    trajs = [_spans(_traj(0.0), 2) for _ in range(6)]
    outcome = torch.tensor([0.0, 0.0, 1.0, 0.0, 0.5, 0.0])  # groups: equal, differ, differ
    returns = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0], [-1, -1], [1, 1], [-1, -1]])
    out = training_rows(
        trajs, returns, outcome, group_size=2, algo="grpo", dynamic="outcome", want=1
    )
    assert out.rows == [2, 3] and out.kept_groups == 1 and out.signal_groups == 2
    torch.testing.assert_close(out.returns, returns[[2, 3]])


def test_rft_imitates_well_formed_full_marks_and_leaves_the_rest_out():
    trajs = [
        _spans(_traj(1.0), 2),
        _spans(_traj(0.4), 2),
        _spans(_traj(1.0, ok=False), 2),
        _spans(_traj(1.0, turns=1), 1),
    ]
    returns = torch.full((4, 2), 0.3)  # whatever the GRPO pass gave: RFT replaces it
    out = training_rows(
        trajs, returns, torch.zeros(4), group_size=2, algo="rft", exclude=[False] * 3 + [True]
    )
    assert out.rows == [0, 1, 2, 3]
    assert out.returns.tolist() == [[1.0, 1.0], [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]]
    assert out.exclude == [False, True, True, True]  # the failed-search rollout stays out
    assert out.rft_kept == 1


def test_rft_with_dynamic_sampling_keeps_groups_that_have_a_demonstration():
    trajs = [_spans(_traj(f), 2) for f in (0.0, 0.0, 0.0, 1.0)]
    out = training_rows(
        trajs, torch.zeros(4, 2), torch.zeros(4), group_size=2, algo="rft", dynamic="advantage"
    )
    assert out.rows == [2, 3] and out.rft_kept == 1


def test_well_formed_needs_an_answer_within_budget():
    t = _traj(1.0)
    assert well_formed(t)
    t.truncated = True
    assert not well_formed(t)
