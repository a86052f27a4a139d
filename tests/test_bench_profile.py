"""`askdraft bench profile`'s StepTimer: the askdraft_bench StepMeter plus a torch.profiler window."""
import types

import torch

from askdraft.bench.step_timer import StepTimer


def test_step_timer_profiles_its_window(tmp_path):
    timer = StepTimer(1, 2, tmp_path / "ops.txt")
    x = torch.randn(64, 64)
    for step in range(3):  # global_step is the number of steps done when a step begins
        timer.on_step_begin(None, types.SimpleNamespace(global_step=step), None)
        timer.count({"input_ids": torch.ones(2, 8, dtype=torch.long)})
        for _ in range(5):
            x = x @ x.T / 64
        timer.on_step_end(None, types.SimpleNamespace(global_step=step + 1), None)
    assert len(timer.step_s) == 3 and all(s > 0 for s in timer.step_s)
    assert [s["useful"] for s in timer.steps] == [16, 16, 16]
    assert timer.window["steps"] == 1 and timer.window["wall_s"] > 0
    text = (tmp_path / "ops.txt").read_text()
    assert text.startswith("window: 1 optimizer steps") and "aten::mm" in text
