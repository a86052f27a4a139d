"""One row a pair: the prompt once, then the chosen and the rejected completion (askdraft_shared_prompt).

TRL's collator gives a micro-batch of n pairs as 2n right-padded rows, [prompt + chosen; prompt +
rejected], so every prompt runs through the model twice, and a draft-conditioned prompt is most of
a pair (~200 tokens before a 2-token answer). Here each pair is one row, prompt + chosen +
rejected, with an attention mask in which the rejected tokens see the prompt and themselves but not
the chosen ones, and position ids that restart after the prompt for each completion. Every token
then sees exactly what it saw in TRL's layout, at the same positions, so the log-probs are TRL's
(tests/test_dpo_shared_prompt.py: equal to 1e-5 in float32); the model runs on about half the tokens.
The LM head runs only at the positions that predict a completion token (logits_to_keep).

The mask is 4-D, which transformers passes to the attention as it is: boolean for SDPA (True: may
attend), additive for eager attention; flash attention takes no such mask (layout() refuses it).
"""
import torch

from trl.trainer.utils import selective_log_softmax

ATTENTION = ("sdpa", "eager")


def layout(input_ids, attention_mask, completion_mask, pad_id, attn_implementation="sdpa"):
    """The shared-prompt rows of TRL's collated batch ([chosen rows; rejected rows], right-padded).

    Returns (model_kwargs, targets): model_kwargs for the model call (input_ids, position_ids, a 4-D
    attention_mask, logits_to_keep: the sorted positions any row predicts from); targets holds, per
    pair and completion token (chosen first, then rejected), `column` (the token's predicting
    position as an index into logits_to_keep), `token`, `is_chosen` and `valid` (False: padding).
    """
    if attn_implementation not in ATTENTION:
        raise ValueError(f"askdraft_shared_prompt needs attn_implementation sdpa or eager (a 4-D mask), "
                         f"got {attn_implementation}")
    n = input_ids.shape[0] // 2
    device = input_ids.device  # the layout is built on the CPU (one copy of the batch), then moved
    input_ids, real, completion = input_ids.cpu(), attention_mask.cpu().bool(), completion_mask.cpu().bool()
    prompt = real & ~completion
    rows, sources, tokens, chosen_flags = [], [], [], []
    for i in range(n):
        p_chosen, p_rejected = input_ids[i][prompt[i]], input_ids[n + i][prompt[n + i]]
        if not torch.equal(p_chosen, p_rejected) or len(p_chosen) == 0:
            raise ValueError(f"askdraft_shared_prompt: pair {i} of the batch has different (or empty) prompts in its "
                             "chosen and rejected rows (truncated?); turn askdraft_shared_prompt off")
        chosen = input_ids[i][real[i] & completion[i]]
        rejected = input_ids[n + i][real[n + i] & completion[n + i]]
        p, c = len(p_chosen), len(chosen)
        rows.append((p_chosen, chosen, rejected))
        # a completion's first token is predicted at the prompt's last position, the others each at
        # the position before, within the same completion
        sources.append(torch.cat([torch.arange(p - 1, p + c - 1), torch.tensor([p - 1]),
                                  torch.arange(p + c, p + c + len(rejected) - 1)]))
        tokens.append(torch.cat([chosen, rejected]))
        chosen_flags.append(torch.arange(c + len(rejected)) < c)
    length = max(sum(len(part) for part in row) for row in rows)
    ids = torch.full((n, length), pad_id, dtype=input_ids.dtype)
    positions = torch.zeros((n, length), dtype=torch.long)
    segment = torch.full((n, length), 3)  # 0 prompt, 1 chosen, 2 rejected, 3 padding
    for i, (p_ids, chosen, rejected) in enumerate(rows):
        p, c, r = len(p_ids), len(chosen), len(rejected)
        ids[i, :p + c + r] = torch.cat([p_ids, chosen, rejected])
        positions[i, :p + c + r] = torch.cat([torch.arange(p), torch.arange(p, p + c), torch.arange(p, p + r)])
        positions[i, p + c + r:] = torch.arange(p + r, p + r + length - (p + c + r))
        segment[i, :p], segment[i, p:p + c], segment[i, p + c:p + c + r] = 0, 1, 2
    query, key = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal & (key != 3) & ~((query == 2) & (key == 1))
    allowed |= torch.eye(length, dtype=torch.bool)  # a padding query sees itself: no empty softmax row
    keep = torch.unique(torch.cat(sources))  # sorted
    width = max(len(t) for t in tokens)
    targets = {"column": torch.zeros((n, width), dtype=torch.long), "token": torch.zeros((n, width), dtype=torch.long),
               "is_chosen": torch.zeros((n, width), dtype=torch.bool), "valid": torch.zeros((n, width), dtype=torch.bool)}
    for i in range(n):
        k = len(tokens[i])
        targets["column"][i, :k] = torch.searchsorted(keep, sources[i])
        targets["token"][i, :k], targets["is_chosen"][i, :k], targets["valid"][i, :k] = tokens[i], chosen_flags[i], True
    mask = allowed[:, None]
    if attn_implementation == "eager":  # eager adds the mask to the scores
        mask = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    model_kwargs = {"input_ids": ids.to(device), "position_ids": positions.to(device),
                    "attention_mask": mask.to(device), "logits_to_keep": keep.to(device)}
    return model_kwargs, {k: v.to(device) for k, v in targets.items()}


def pair_logps(logits, targets):
    """(chosen, rejected) summed log-probs per pair from the kept logits [n, len(keep), vocab]."""
    picked = logits.gather(1, targets["column"][..., None].expand(-1, -1, logits.shape[-1]))
    per_token = selective_log_softmax(picked, targets["token"])
    chosen = (per_token * (targets["valid"] & targets["is_chosen"])).sum(dim=1)
    rejected = (per_token * (targets["valid"] & ~targets["is_chosen"])).sum(dim=1)
    return chosen, rejected


def shared_prompt_logps(model, inputs, pad_id, attn_implementation):
    """(logps [chosen; rejected] as TRL's sequence sums, the model's outputs, the token positions it
    ran) in the shared layout."""
    model_kwargs, targets = layout(inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"],
                                   pad_id, attn_implementation)
    outputs = model(**model_kwargs, use_cache=False)
    chosen, rejected = pair_logps(outputs.logits, targets)
    return torch.cat([chosen, rejected]), outputs, model_kwargs["input_ids"].numel()
