"""Phase C losses: small pure functions over per-pair sequence log-probs (no trainer code).

Notation, per preference pair i (sums over completion tokens):
    r_w = log pi(chosen)   - log ref(chosen)      "chosen log-ratio"
    r_l = log pi(rejected) - log ref(rejected)    "rejected log-ratio"
    h   = r_w - r_l                               "log-gap"; the DPO reward margin is beta * h

Two families of tricks, chosen per epoch by the recipe's schedule (`cal`, `robust` keys):

* seed (the default; what the design document asks for). These are NOT the published methods
  that share their names:
  - seed Cal-DPO: subtract the batch mean of h (detached) before the sigmoid loss,
    loss_i = -log sigmoid(beta * (h_i - mean(h))).
  - seed Dr-DPO: drop, from the batch mean, the `fraction` of pairs with the highest
    disagreement score (by default the lowest margin: the pairs the model most strongly
    prefers the wrong way).
* published:
  - Cal-DPO (Xiao et al. 2024, arXiv 2412.14516), as the authors' released code computes it
    (github.com/tengxiao1/Cal-DPO, scripts/dpo_trainer.py lines 1211-1216 at commit 7d16b46):
        DPO_i = -log sigmoid(r_w,i - r_l,i)                        (per pair, no beta)
        Cal   = mean_i (r_w,i - 1/(2 beta))^2 + mean_i (r_l,i + 1/(2 beta))^2   (F.mse_loss:
                one batch-mean scalar, not per pair)
        loss_i = DPO_i + 0.5 * Cal
    The paper writes the two squares with weight 1 and inside the per-pair expectation; the
    code halves them and averages them over the batch before adding them to every pair. With
    robust "none" the per-pair and batch-mean forms give the same batch loss; composed with a
    robust aggregation (seed drop, published soft-min) they differ: here, as in the code, the
    calibration term is over every pair of the micro-batch and is never dropped or reweighted.
  - Dr. DPO (Wu et al. 2024, arXiv 2407.07880): L = -beta' * log mean_i exp(-loss_i / beta'),
    which weights each pair's gradient by softmax(-loss / beta')_i. The authors' released code
    (github.com/junkangwu/Dr_DPO, trainers.py line 270 at commit 3c0678f) computes exactly this
    over one device's micro-batch, as torch.log(torch.mean(torch.exp(-losses / beta'))); we use
    logsumexp, the same value without underflow to log(0) for large losses / small beta'.
    On a micro-batch of one pair it is plain DPO (the soft-min of one loss is that loss).

`cal` picks the per-pair loss, `robust` picks how the per-pair losses become one number, so the
two compose (e.g. published Cal-DPO aggregated by published Dr. DPO).

Batch statistics on one or several devices. With N data-parallel processes (DDP or DeepSpeed,
micro-batch n each, accumulation 8 / N), accelerate's data loader deals the global micro-batches
of the one-GPU order round-robin: process r gets global micro-batches r, r + N, r + 2N, ...
(BatchSamplerShard, split_batches=False, every process shuffling with the same seed). So:
  - the Cal means (seed: mean h; published: the calibration scalar) are over the n pairs of one
    micro-batch, on every process as on one GPU: the same sets, no cross-device reduction;
  - the seed Dr drop count of a micro-batch is a function of its position in the global order,
    seed_dr_drop_count(fraction, pairs_before, n) with pairs_before = the pairs of all global
    micro-batches before it: exactly the count the one-GPU carry process (seed_dr_keep_mask
    called micro-batch after micro-batch) drops there, so N processes drop the same number of
    pairs from the same micro-batches as one GPU (tests/test_dpo_losses.py checks N = 1, 2, 4).
"""
import math

import torch
import torch.nn.functional as F

from .args import DR_BETA_PRIME, DROP_FRACTION, DROP_SCORE, DROP_SCORES, MODES, OFF



def dpo_per_pair(h, beta):
    """Plain sigmoid DPO: -log sigmoid(beta * h). Same as TRL's loss_type="sigmoid"."""
    return -F.logsigmoid(beta * h)


def seed_cal_per_pair(h, beta):
    """Seed Cal-DPO. Returns (per-pair loss, the subtracted mean of h)."""
    shift = h.detach().mean()
    return -F.logsigmoid(beta * (h - shift)), shift


CAL_WEIGHT = 0.5  # the released code's `losses = DPO_loss + 0.5*Cal_loss` (see the top)


def published_cal_per_pair(r_w, r_l, beta):
    """Cal-DPO as released by Xiao et al.: -log sigmoid(r_w - r_l) per pair plus 0.5 times the
    batch-mean calibration scalar mean (r_w - 1/(2 beta))^2 + mean (r_l + 1/(2 beta))^2, the
    same scalar added to every pair (F.mse_loss with its default mean reduction)."""
    target = 1.0 / (2.0 * beta)
    cal = ((r_w - target) ** 2).mean() + ((r_l + target) ** 2).mean()
    return -F.logsigmoid(r_w - r_l) + CAL_WEIGHT * cal


DROP_EPS = 1e-9  # 0.15 * 20 pairs is 3.0000000000000004 or 2.9999999999999996 depending on the order


def _seed_dr_step(n, fraction, carry):
    """(pairs dropped from a batch of n, the new carry) of seed Dr-DPO's carry process."""
    want = fraction * n + carry
    k = min(int(want + DROP_EPS), max(n - 1, 1))  # DROP_EPS: 0.4 + 0.6 must give 1, not 0.999..
    return k, min(max(want - k, 0.0), 1.0)


def seed_dr_keep_mask(score, fraction, carry=0.0):
    """Seed Dr-DPO: keep-mask that drops the `fraction` of pairs with the highest `score`.

    fraction * batch is rarely whole (15 % of a micro-batch of 4 is 0.6), so the fractional
    rest is carried to the next batch (error diffusion): over many batches exactly `fraction`
    of the pairs are dropped, at every micro-batch size.

    At least one pair of a batch is kept (an all-dropped batch has no loss), so a micro-batch
    of one pair can never drop inside itself. There the drop is whole-batch: when the carried
    want reaches one pair, the batch's only pair is dropped (keep mask all False: the caller
    gives that micro-batch a zero loss that still depends on the graph) and the carry goes on
    without a cap, so micro-batch 1 drops 15 % of its pairs too (3 of every 20). The score
    cannot choose among one pair: at micro-batch 1 the seed drop is a systematic 15 %
    subsample, not a disagreement filter; use micro_batch_size >= 2 for the filter.
    Returns (keep mask, number dropped, new carry).
    """
    n = score.numel()
    k, new_carry = _seed_dr_step(n, fraction, carry)
    keep = torch.ones(n, dtype=torch.bool, device=score.device)
    if k > 0:
        keep[torch.topk(score.detach(), k).indices] = False
    return keep, k, new_carry


def seed_dr_carry_at(fraction, pairs_before):
    """The carry seed_dr_keep_mask's one-GPU process holds after `pairs_before` pairs (from carry 0,
    below its cap): the fractional part of fraction * pairs_before."""
    want = fraction * pairs_before
    return max(want - math.floor(want + DROP_EPS), 0.0)


def seed_dr_drop_count(fraction, pairs_before, n):
    """Pairs the one-GPU carry process drops from a micro-batch of n pairs that follows
    `pairs_before` pairs: floor(f (P + n)) - floor(f P), capped at n - 1 for n >= 2 (a batch keeps
    a pair; below the cap the carry never saturates, and at f >= 1 - 1/n both give n - 1 every
    batch). A function of the global position only, so every process computes its own count."""
    return _seed_dr_step(n, fraction, seed_dr_carry_at(fraction, pairs_before))[0]


def published_dr_loss(per_pair, beta_prime):
    """Dr. DPO of Wu et al. 2024: -beta' * log mean exp(-loss_i / beta') (a soft-min of the losses)."""
    n = per_pair.numel()
    return -beta_prime * (torch.logsumexp(-per_pair / beta_prime, dim=0) - math.log(n))


def askdraft_loss(
    chosen_logps,
    rejected_logps,
    ref_chosen_logps,
    ref_rejected_logps,
    *,
    beta,
    cal=OFF,
    robust=OFF,
    drop_fraction=DROP_FRACTION,
    drop_score=DROP_SCORE,
    beta_prime=DR_BETA_PRIME,
    carry=0.0,
    pairs_before=None,
):
    """The phase C loss of one batch. Returns (loss, stats, new carry for seed Dr-DPO).

    Seed Dr-DPO's drop count: from `carry` (the one-GPU process), or, when `pairs_before` is
    given, from the micro-batch's global position (seed_dr_drop_count; what the trainer uses, the
    same count on one or several devices).

    stats: cal_shift (mean h subtracted; 0 unless cal == "seed"), pairs_dropped (seed Dr-DPO),
    and the usual reward statistics (beta * log-ratios, as TRL logs them).
    """
    if cal not in MODES or robust not in MODES or drop_score not in DROP_SCORES:
        raise ValueError(f"bad mode: cal={cal!r} robust={robust!r} drop_score={drop_score!r}")
    r_w = chosen_logps - ref_chosen_logps
    r_l = rejected_logps - ref_rejected_logps
    h = r_w - r_l

    shift = torch.zeros((), device=h.device)
    if cal == OFF:
        per_pair = dpo_per_pair(h, beta)
    elif cal == "seed":
        per_pair, shift = seed_cal_per_pair(h, beta)
    else:
        per_pair = published_cal_per_pair(r_w, r_l, beta)

    dropped = 0
    if robust == OFF:
        loss = per_pair.mean()
    elif robust == "seed":
        score = {"margin": -h, "policy": -(chosen_logps - rejected_logps), "loss": per_pair}[drop_score]
        if pairs_before is not None:
            carry = seed_dr_carry_at(drop_fraction, pairs_before)
        keep, dropped, carry = seed_dr_keep_mask(score, drop_fraction, carry)
        # a one-pair micro-batch whose pair is dropped: zero loss, still attached to the graph.
        # The masked mean needs no host sync (per_pair[keep] would wait for the device)
        n = per_pair.numel()
        loss = torch.where(keep, per_pair, 0.0).sum() / (n - dropped) if dropped < n else per_pair.sum() * 0.0
    else:
        loss = published_dr_loss(per_pair, beta_prime)

    chosen_rewards, rejected_rewards = beta * r_w.detach(), beta * r_l.detach()
    stats = {
        "cal_shift": shift.detach(),
        "pairs_dropped": dropped,
        "chosen_rewards": chosen_rewards,
        "rejected_rewards": rejected_rewards,
        "margins": chosen_rewards - rejected_rewards,
        "accuracies": (chosen_rewards > rejected_rewards).float(),
    }
    return loss, stats, carry


# ---------------------------------------------------------------- stabilisers (recipe keys)

def length_normalized(logps, lengths):
    """Mean instead of summed log-prob per completion token (askdraft_length_normalize): a
    2-token answer and a 60-token draft are compared per token, as in SimPO / TRL's IPO."""
    return logps / lengths.clamp(min=1)


def rpo_nll(chosen_logps, chosen_lengths):
    """The NLL of the chosen completion per token, averaged over pairs: RPO's term (Pang et al.
    2024, arXiv 2404.19733; TRL's rpo_alpha), added to the DPO loss times askdraft_rpo_alpha so
    the chosen answer's likelihood cannot fall while the margin grows."""
    return -(chosen_logps / chosen_lengths.clamp(min=1)).mean()
