"""What the training recipes share: the rows of a step, a resumed run's counts, the SFT loss, the lr schedule."""
import math
import random

import torch


def batch_rows(rows, step, batch_size, seed):
    """The global batch of a step: a fixed permutation per epoch, so a resumed run sees exactly the same data."""
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, i = divmod(start + len(out), len(rows))
        perm = list(range(len(rows)))
        random.Random(seed * 100003 + epoch).shuffle(perm)
        out.append(rows[perm[i]])
    return out


def resumed_counts(state):
    """(step, rows skipped so far over all ranks, a few of them as `path:line: why`) of a resumed run."""
    if not state:
        return 0, 0, []
    skipped = state.get("skipped", 0)
    if isinstance(skipped, list):  # checkpoints before the count was global kept rank 0's list
        return state["step"], len(skipped), skipped[:5]
    return state["step"], skipped, state.get("skip_examples", [])


def sft_loss(model, batch, num_tokens):
    """Sum of answer-token cross-entropies / the global answer-token count (so split batches add up exactly)."""
    labels = batch.pop("labels")
    # token t predicts t+1; labels are -100 on prompt and video tokens, which so need no logits at all
    target = labels[:, 1:]
    at = torch.nn.functional.pad(target != -100, (0, 1))
    logits = model(**batch, logits_at=at).float()
    return torch.nn.functional.cross_entropy(logits, target[target != -100], reduction="sum") / num_tokens


def cosine_schedule(optimizer, warmup_steps, total_steps, min_ratio=0.1):
    """Linear warm-up to the base lr over warmup_steps, then cosine decay to min_ratio * lr at total_steps.
    A plain function lambda, so LambdaLR.state_dict() stays JSON-able (lr_lambdas: [None])."""
    def ratio(step):
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, ratio)
