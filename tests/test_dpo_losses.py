"""Every phase C loss against arithmetic written out by hand on three pairs."""
import ast
import math
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from askdraft_dpo.args import AskDraftDPOArgs
from askdraft_dpo.losses import (askdraft_loss, published_dr_loss, seed_dr_drop_count, seed_dr_keep_mask)

BETA = 0.1
# (log pi(chosen), log ref(chosen), log pi(rejected), log ref(rejected)) per pair
PAIRS = [(-1.0, -1.5, -2.0, -1.0),   # r_w = 0.5,  r_l = -1.0, h = 1.5
         (-3.0, -2.0, -1.0, -1.5),   # r_w = -1.0, r_l = 0.5,  h = -1.5
         (-2.0, -2.0, -2.5, -2.0)]   # r_w = 0.0,  r_l = -0.5, h = 0.5
R_W, R_L, H = [0.5, -1.0, 0.0], [-1.0, 0.5, -0.5], [1.5, -1.5, 0.5]


def softplus(x):  # -log sigmoid(-x)
    return math.log(1 + math.exp(x))


def run(**kw):
    pi_w, ref_w, pi_l, ref_l = [torch.tensor(c, dtype=torch.float64) for c in zip(*PAIRS)]
    return askdraft_loss(pi_w, pi_l, ref_w, ref_l, beta=BETA, **kw)


def test_plain_dpo():
    loss, stats, _ = run()
    hand = (softplus(-0.15) + softplus(0.15) + softplus(-0.05)) / 3
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    assert stats["margins"].tolist() == pytest.approx([0.15, -0.15, 0.05])
    assert stats["accuracies"].tolist() == [1.0, 0.0, 1.0]
    assert stats["cal_shift"].item() == 0 and stats["pairs_dropped"] == 0


def test_seed_cal_subtracts_detached_mean():
    h = torch.tensor(H, dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(3, dtype=torch.float64)
    loss, stats, _ = askdraft_loss(h, zero, zero, zero, beta=BETA, cal="seed")
    mean_h = (1.5 - 1.5 + 0.5) / 3
    assert stats["cal_shift"].item() == pytest.approx(mean_h)
    hand = sum(softplus(-BETA * (x - mean_h)) for x in H) / 3
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    loss.backward()
    # no gradient through the mean: d/dh_i = -beta * sigmoid(-beta (h_i - mean)) / n, nothing else
    hand_grad = [-BETA / (1 + math.exp(BETA * (x - mean_h))) / 3 for x in H]
    assert h.grad.tolist() == pytest.approx(hand_grad, abs=1e-12)
    # the rewards logged stay the uncalibrated beta * log-ratios
    assert stats["margins"].tolist() == pytest.approx([0.15, -0.15, 0.05])


# Cal-DPO as released: github.com/tengxiao1/Cal-DPO, scripts/dpo_trainer.py at commit
# 7d16b466e52733269bbd6f7544a807faa555772b, lines 1211-1216:
#     DPO_loss = -F.logsigmoid((chosen_rewards - rejected_rewards))
#     Cal_loss = F.mse_loss(chosen_rewards, 1/(2 beta)) + F.mse_loss(rejected_rewards, -1/(2 beta))
#     losses = DPO_loss + 0.5*Cal_loss                                          # line 1216
# and get_batch_loss_metrics returns losses.mean() (line 1386). F.mse_loss reduces by the mean,
# so Cal_loss is one batch scalar added to every pair, at half weight (the paper: weight 1).
T = 1 / (2 * BETA)  # 5.0
CAL = (sum((w - T) ** 2 for w in R_W) + sum((l + T) ** 2 for l in R_L)) / 3
# by hand: chosen squares (0.5-5)^2 + (-1-5)^2 + (0-5)^2 = 20.25 + 36 + 25 = 81.25,
# rejected squares (-1+5)^2 + (0.5+5)^2 + (-0.5+5)^2 = 16 + 30.25 + 20.25 = 66.5
CAL_BY_HAND = (81.25 + 66.5) / 3
CAL_PER_PAIR = [softplus(-(w - l)) + 0.5 * CAL for w, l in zip(R_W, R_L)]


def test_published_cal_matches_the_released_code():
    assert CAL == pytest.approx(CAL_BY_HAND)
    loss, stats, _ = run(cal="published")
    # pair 1 by hand: log(1 + e^-1.5) + 0.5 * 49.25
    assert CAL_PER_PAIR[0] == pytest.approx(math.log(1 + math.exp(-1.5)) + 0.5 * 49.25)
    assert loss.item() == pytest.approx(sum(CAL_PER_PAIR) / 3, abs=1e-12)
    assert stats["cal_shift"].item() == 0
    # the released code, transcribed (mse_loss, mean reduction, 0.5 weight, losses.mean())
    import torch.nn.functional as F
    cw, cl = torch.tensor(R_W, dtype=torch.float64), torch.tensor(R_L, dtype=torch.float64)
    released = (-F.logsigmoid(cw - cl) + 0.5 * (F.mse_loss(cw, torch.tensor(T).to(cw))
                                                 + F.mse_loss(cl, torch.tensor(-T).to(cl)))).mean()
    assert loss.item() == pytest.approx(released.item(), abs=1e-12)


def test_published_cal_is_a_batch_scalar_under_published_dr():
    # soft-min over pairs of (DPO_i + 0.5 Cal) = soft-min of DPO_i + 0.5 Cal: the calibration
    # term is not reweighted pair by pair, as it would be if it were per pair
    dpo = [softplus(-(w - l)) for w, l in zip(R_W, R_L)]
    hand = -math.log(sum(math.exp(-x) for x in dpo) / 3) + 0.5 * CAL
    loss, _, _ = run(cal="published", robust="published", beta_prime=1.0)
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    per_pair_form = [d + 0.5 * ((w - T) ** 2 + (l + T) ** 2) for d, w, l in zip(dpo, R_W, R_L)]
    assert loss.item() != pytest.approx(-math.log(sum(math.exp(-x) for x in per_pair_form) / 3))


def test_seed_dr_drops_lowest_margin():
    loss, stats, carry = run(robust="seed", drop_fraction=1 / 3)
    assert stats["pairs_dropped"] == 1 and carry == pytest.approx(0, abs=1e-9)
    # pair 2 (h = -1.5, the lowest margin) is dropped; the mean is over the two kept pairs
    assert loss.item() == pytest.approx((softplus(-0.15) + softplus(-0.05)) / 2, abs=1e-12)


@pytest.mark.parametrize("score, dropped", [("margin", 1), ("policy", 1), ("loss", 1)])
def test_seed_dr_scores(score, dropped):
    # policy score: log pi(w) - log pi(l) = [1.0, -2.0, 0.5] -> pair 2 lowest as well
    cols = [torch.tensor(c, dtype=torch.float64) for c in zip(*PAIRS)]
    keep, k, _ = seed_dr_keep_mask({"margin": -torch.tensor(H), "policy": -(cols[0] - cols[2]),
                                    "loss": torch.tensor([0.6, 0.8, 0.7])}[score], 1 / 3)
    assert k == dropped and keep.tolist() == [True, False, True]


def test_seed_dr_carries_the_fraction():
    # 15 % of a micro-batch of 4 is 0.6 pair: carried over, it drops 0,1,0,1,1 (3 of 20) ...
    carry, counts = 0.0, []
    for _ in range(20):
        _, k, carry = seed_dr_keep_mask(torch.arange(4.0), 0.15, carry)
        counts.append(k)
    assert counts[:5] == [0, 1, 0, 1, 1]
    assert sum(counts) == 12  # ... and exactly 15 % of 80 pairs
    keep, k, _ = seed_dr_keep_mask(torch.arange(4.0), 0.15, 0.5)
    assert k == 1 and keep.tolist() == [True, True, True, False]  # highest score dropped
    keep, k, _ = seed_dr_keep_mask(torch.zeros(2), 0.9, 0.9)
    assert k == 1 and keep.sum() == 1  # a batch of two keeps one pair


def test_seed_dr_drops_15_percent_at_micro_batch_1():
    # one pair per micro-batch: the carried fraction drops a whole micro-batch when it reaches 1
    carry, counts = 0.0, []
    for _ in range(20):
        keep, k, carry = seed_dr_keep_mask(torch.zeros(1), 0.15, carry)
        assert keep.tolist() == [k == 0]
        counts.append(k)
    assert sum(counts) == 3 and counts[:7] == [0, 0, 0, 0, 0, 0, 1]
    # the dropped micro-batch has zero loss and zero gradient, but a graph
    h = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    zero = torch.zeros(1, dtype=torch.float64)
    loss, stats, carry = askdraft_loss(h, zero, zero, zero, beta=BETA, robust="seed", carry=0.9)
    assert stats["pairs_dropped"] == 1 and loss.item() == 0 and carry == pytest.approx(0.05)
    loss.backward()
    assert h.grad.tolist() == [0.0]


def one_gpu_drops(fraction, n, batches):
    """The one-GPU carry process, micro-batch after micro-batch (what the trainer did before it
    ran on several devices)."""
    carry, counts = 0.0, []
    for _ in range(batches):
        _, k, carry = seed_dr_keep_mask(torch.zeros(n), fraction, carry)
        counts.append(k)
    return counts


@pytest.mark.parametrize("world", [1, 2, 4])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("fraction", [0.0, 0.15, 0.1, 1 / 3, 0.5, 0.7, 0.9])
def test_seed_dr_global_position_equals_the_one_gpu_carry(world, n, fraction):
    # N ranks: rank r's local micro-batch i is global micro-batch i * N + r (accelerate's
    # BatchSamplerShard), the pairs before it (i * N + r) * n
    batches = 240
    ranks = [[seed_dr_drop_count(fraction, (i * world + r) * n, n) for i in range(batches // world)]
             for r in range(world)]
    interleaved = [ranks[g % world][g // world] for g in range(batches)]
    assert interleaved == one_gpu_drops(fraction, n, batches)
    if fraction == 0.15 and n == 4:
        assert sum(interleaved) == 0.15 * 4 * batches  # exactly 15 %


def test_askdraft_loss_at_a_global_position():
    # the loss with pairs_before = P drops what the carry process holds after P pairs implies
    _, stats, _ = run(robust="seed", drop_fraction=0.2, pairs_before=3)  # 0.6 + 0.6 -> 1
    _, stats0, _ = run(robust="seed", drop_fraction=0.2, pairs_before=0)  # 0.6 -> 0
    assert (stats["pairs_dropped"], stats0["pairs_dropped"]) == (1, 0)
    _, stats, _ = run(robust="seed", drop_fraction=0.2, pairs_before=6)  # carry .2 + .6 -> 0
    assert stats["pairs_dropped"] == 0


# Dr. DPO as released: github.com/junkangwu/Dr_DPO, trainers.py at commit
# 3c0678fe31f1139cc54405880f0028264129a032, line 270:
#     return - loss_config.mode_weight * torch.log(torch.mean(torch.exp( - losses / loss_config.mode_weight)))
# (mode_weight is beta'; losses are one device's per-pair sigmoid DPO losses)
@pytest.mark.parametrize("beta_prime", [1.0, 0.5])
def test_published_dr(beta_prime):
    losses = [softplus(-0.15), softplus(0.15), softplus(-0.05)]
    hand = -beta_prime * math.log(sum(math.exp(-x / beta_prime) for x in losses) / 3)
    loss, _, _ = run(robust="published", beta_prime=beta_prime)
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    # per-pair gradient weights: dL/dloss_i = softmax(-loss / beta')_i
    per_pair = torch.tensor(losses, dtype=torch.float64, requires_grad=True)
    published_dr_loss(per_pair, beta_prime).backward()
    z = sum(math.exp(-x / beta_prime) for x in losses)
    assert per_pair.grad.tolist() == pytest.approx([math.exp(-x / beta_prime) / z for x in losses], abs=1e-12)
    assert per_pair.grad[1] < per_pair.grad[0]  # the worst pair (highest loss) weighs least


def test_dr_published_tends_to_mean_for_large_beta_prime():
    plain, _, _ = run()
    soft, _, _ = run(robust="published", beta_prime=1e6)
    assert soft.item() == pytest.approx(plain.item(), rel=1e-5)


def test_modes_compose_published_cal_with_seed_dr():
    loss, stats, _ = run(cal="published", robust="seed", drop_fraction=1 / 3, drop_score="loss")
    worst = CAL_PER_PAIR.index(max(CAL_PER_PAIR))  # pair 2: its DPO term is the largest
    assert worst == 1 and stats["pairs_dropped"] == 1
    # the calibration scalar is over all three pairs, the dropped one included
    assert loss.item() == pytest.approx((sum(CAL_PER_PAIR) - CAL_PER_PAIR[worst]) / 2, abs=1e-12)


def test_bad_mode_is_an_error():
    with pytest.raises(ValueError, match="cal='calibrated'"):
        run(cal="calibrated")


@pytest.mark.parametrize("bad, msg", [
    ({"askdraft_drop_fraction": 1.0}, "less than 1"),
    ({"askdraft_drop_fraction": -0.1}, "greater than or equal to 0"),
    ({"askdraft_dr_beta_prime": 0}, "greater than 0"),
    ({"askdraft_drop_score": "entropy"}, "'margin', 'policy' or 'loss'"),
    ({"askdraft_schedule": [{"epochs": [1, 1], "beta": -0.05}]}, "greater than 0"),
    ({"askdraft_schedule": [{"epochs": [1, 1], "beta": 0.1, "cal": "calibrated"}]}, "'none', 'seed' or 'published'"),
    ({"askdraft_schedule": [{"epochs": [1, 2], "beta": 0.1}, {"epochs": [2, 4], "beta": 0.1}]}, "overlap at epoch 2"),
    ({"askdraft_schedule": [{"epochs": [1, 1], "beta": 0.1}, {"epochs": [3, 4], "beta": 0.1}]}, "gap at epoch 2"),
    ({"askdraft_schedule": [{"epochs": [2, 1], "beta": 0.1}]}, "1 <= first <= last"),
    ({"askdraft_schedule": [{"epochs": [1, 1], "beta": 0.1, "gamma": 1}]}, "Extra inputs"),
    ({"askdraft_drop_fracton": 0.1}, "unknown askdraft_dpo key"),
    ({"drop_fraction": 0.1}, r"'drop_fraction' \(did you mean 'askdraft_drop_fraction'\?\)"),
    ({"dr_beta_prime": 0.5}, r"did you mean 'askdraft_dr_beta_prime'"),
    ({"askdraft-schedule": []}, r"did you mean 'askdraft_schedule'"),
])
def test_recipe_keys_are_validated(bad, msg):
    with pytest.raises(ValueError, match=msg):
        AskDraftDPOArgs(**bad)


def test_stabilisers_by_hand():
    from askdraft_dpo.losses import length_normalized, rpo_nll
    logps, lengths = torch.tensor([-6.0, -2.0, -9.0]), torch.tensor([3, 1, 0])
    assert length_normalized(logps, lengths).tolist() == [-2.0, -2.0, -9.0]  # an empty completion counts 1
    assert rpo_nll(logps, lengths).item() == pytest.approx((2.0 + 2.0 + 9.0) / 3)
    assert AskDraftDPOArgs(askdraft_rpo_alpha=0.5, askdraft_length_normalize=True).askdraft_rpo_alpha == 0.5
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        AskDraftDPOArgs(askdraft_rpo_alpha=-1.0)


def test_key_errors_name_only_the_plugins_keys():
    # inside axolotl the validator runs on the merged config class with ~400 fields
    from pydantic import create_model
    merged = create_model("Merged", __base__=AskDraftDPOArgs,
                          **{f"axolotl_field_{i}": (int, 0) for i in range(50)}, lora_dropout=(float, 0.0))
    for bad in ({"askdraft_drop_fracton": 0.1}, {"drop_fraction": 0.1}):
        with pytest.raises(ValueError) as e:
            merged(**bad)
        known = str(e.value).split("known: ")[1]
        assert "askdraft_drop_fraction" in known and "axolotl_field" not in known
    # the merged class's own keys are never taken for typos
    merged(lora_dropout=0.05, axolotl_field_3=1)


# ---------------------------------------------------------------- a self-contained plugin

PLUGIN_DIR = Path(__file__).resolve().parent.parent / "plugins" / "askdraft_dpo"


def test_plugin_imports_nothing_from_the_tools():
    """The plugin can be dropped into another Axolotl setup: no module of it imports askdraft."""
    for path in sorted(PLUGIN_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            assert not [n for n in names if n.split(".")[0] == "askdraft"], (path.name, names)


def test_tools_import_the_plugins_reader_without_axolotl():
    """askdraft's readers share askdraft_dpo.rows; importing them must not load axolotl (seconds)."""
    code = ("import sys, askdraft.records, askdraft.io, askdraft_dpo.rows as r; "
            "assert 'axolotl' not in sys.modules and 'torch' not in sys.modules; "
            "assert askdraft.io.InputError is r.InputError")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(PLUGIN_DIR.parent.parent / "tools"), str(PLUGIN_DIR.parent), os.environ.get("PYTHONPATH", "")])})


def test_schedule_modes_are_the_losses_modes():
    """One list of mode names: the schema's Literal and the loss's checks read args.MODES."""
    from askdraft_dpo import args

    assert typing.get_args(args.ScheduleEntry.model_fields["cal"].annotation) == args.MODES
    assert typing.get_args(args.AskDraftDPOArgs.model_fields["askdraft_drop_score"].annotation) == args.DROP_SCORES
    for cal in args.MODES:
        for robust in args.MODES:
            run(cal=cal, robust=robust)
    with pytest.raises(ValueError, match="bad mode"):
        run(cal="calibrated")
