"""GRPO (DeepSeekMath, Shao et al. 2024) as ST-R1 uses it (arXiv 2503.12542, Sec. 3.3), in the paper's terms.

For a prompt q, sample G completions o_1..o_G from pi_old and score them: rewards r_i.
    A_i      = (r_i - mean(r)) / (std(r) + eps)                                   group-normalised advantage
    rho_i,t  = pi_theta(o_i,t | q, o_i,<t) / pi_old(o_i,t | ...)                    per-token ratio
    KL_i,t   = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1                          k3 estimator, >= 0
    J        = agg_t,i [ min(rho A, clip(rho, 1-eps_low, 1+eps_high) A) - beta KL ]
and the loss is -J. With mu = 1 update per rollout, pi_old = pi_theta in value, rho = 1 and the clip never binds:
the authors' setting. eps_high > eps_low is DAPO's "clip-higher".
"""
import contextlib
import time
from dataclasses import dataclass

import torch


# ----------------------------------------------------------------------------------------------- the maths

def group_advantages(rewards, group_size, scale="group", eps=1e-4):
    """A_i for rewards (P*G,) laid out prompt-major. scale: 'group' (GRPO), 'batch' (std over the whole batch,
    as in Hu et al. REINFORCE++), 'none' (Dr. GRPO: no std division, which removes the difficulty bias).
    Returns (advantages, frac_zero_std): groups whose rewards are all equal carry no signal (A = 0)."""
    r = rewards.float().view(-1, group_size)
    centred = r - r.mean(dim=1, keepdim=True)
    if scale == "group":
        # unbiased std, as in TRL's GRPOTrainer, so numbers are comparable with it
        std = r.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(r[:, :1])
    elif scale == "batch":
        std = r.std() if r.numel() > 1 else torch.zeros(())
    elif scale == "none":
        std = None
    else:
        raise ValueError(f"unknown advantage scale {scale!r} (group, batch, none)")
    # a group with equal rewards is centred to exactly 0; keep it 0 even with eps = 0
    adv = centred if std is None else centred / torch.where(std > 0, std + eps, torch.ones_like(std))
    frac_zero_std = (r == r[:, :1]).all(dim=1).float().mean().item()
    return adv.view(-1), frac_zero_std


def k3_kl(logp, ref_logp):
    """Schulman's k3 estimator of KL(pi_theta || pi_ref) per token: unbiased, always >= 0, exactly 0 when equal."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(per_token, mask, mode, max_len=None, num_seqs=None, num_tokens=None):
    """Token losses (N, C) -> scalar. seq_mean: mean over tokens of each sequence, then over sequences (GRPO paper
    and the authors' code); token_mean: over all tokens of the batch (DAPO); constant: sum / (N * max_len)
    (Dr. GRPO: no length normalisation, so long wrong answers are not favoured).
    num_seqs / num_tokens: the normalisers of the WHOLE batch when this call sees one micro-batch or one rank's
    share, so that summing the pieces gives exactly the full-batch loss."""
    mask = mask.to(per_token.dtype)
    num_seqs = per_token.shape[0] if num_seqs is None else num_seqs
    if mode == "seq_mean":
        return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / num_seqs
    if mode == "token_mean":
        num_tokens = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1)
        return (per_token * mask).sum() / num_tokens
    if mode == "constant":
        return (per_token * mask).sum() / (num_seqs * (max_len or per_token.shape[1]))
    raise ValueError(f"unknown loss aggregation {mode!r} (seq_mean, token_mean, constant)")


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.04,
              agg="seq_mean", max_len=None, num_seqs=None, num_tokens=None, pg_mask=None, pg_tokens=None):
    """-J of the module docstring. logp (N, C) carries the gradient; old_logp / ref_logp are constants (ref may be
    None when beta = 0). pg_mask: the tokens the policy-gradient term is taken over (default: mask; the KL term is
    always over mask), pg_tokens its whole-batch count for token_mean.
    Returns (loss, stats) with clip fractions measured where the clip really binds."""
    ratio = torch.exp(logp - old_logp)
    adv = advantages.view(-1, 1)
    objective = torch.min(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)
    kl = k3_kl(logp, ref_logp) if (beta and ref_logp is not None) else torch.zeros_like(logp)
    if pg_mask is None:
        loss = -aggregate(objective - beta * kl, mask, agg, max_len, num_seqs, num_tokens)
    else:  # aggregate is linear: the same loss as above when pg_mask = mask
        loss = (-aggregate(objective, pg_mask, agg, max_len, num_seqs, pg_tokens)
                + beta * aggregate(kl, mask, agg, max_len, num_seqs, num_tokens))
    m = mask.bool()
    n = m.sum().clamp(min=1)
    with torch.no_grad():
        stats = dict(kl=(kl * m).sum().item() / n.item(),
                     clip_low=((ratio < 1 - eps_low) & (adv < 0) & m).sum().item() / n.item(),
                     clip_high=((ratio > 1 + eps_high) & (adv > 0) & m).sum().item() / n.item())
    return loss, stats


# ----------------------------------------------------------------------------------------------- batches of rows

def video_offsets(grid):
    """Row offsets of each video's patches inside the concatenated pixel_values_videos (one video per row)."""
    sizes = grid.prod(dim=1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)]).tolist()


def select_rows(batch, rows):
    """Sub-batch of a collated prompt batch (one video per row): ids, masks and the matching video patches."""
    rows = list(rows)
    out = {k: v[rows] for k, v in batch.items() if k != "pixel_values_videos"}
    if "pixel_values_videos" in batch:
        off = video_offsets(batch["video_grid_thw"])
        out["pixel_values_videos"] = torch.cat([batch["pixel_values_videos"][off[r]:off[r + 1]] for r in rows])
    return out


def repeat_rows(batch, n):
    """Every prompt row repeated n times, prompt-major (row i*n+g), matching generate()'s sample order."""
    return select_rows(batch, [i for i in range(batch["input_ids"].shape[0]) for _ in range(n)])


def completion_logprobs(model, prompts, tokens, mask, temperature=1.0, with_entropy=False, group_size=1):
    """log pi(o_t | q, o_<t) of the completion tokens (N, C). prompts: N / group_size collated rows; completion
    row i*group_size+g belongs to prompt i (generate()'s order).

    Each prompt (and its video) goes through the model once, into a KV cache that is then repeated for its G
    completions; the completions attend to it like to their own prefix, and the repeat's backward adds up the G
    gradients. Same numbers as running every (prompt, completion) pair in full, for 1/G of the prompt's cost."""
    N, C = tokens.shape
    inputs = {k: v for k, v in prompts.items() if k != "labels"}
    B, L = inputs["input_ids"].shape
    if B * group_size != N:
        raise ValueError(f"{N} completions for {B} prompts x group_size {group_size}")
    # DDP allows one forward per backward: the prompt pass calls the wrapped module itself (its parameters' gradient
    # hooks still fire in the backward). FSDP2 and plain modules have no .module: they are called directly.
    core = getattr(model, "module", model)
    # both passes in one autocast region (bf16-mixed): they share one bf16 copy of each weight, which the backward
    # keeps, instead of one each
    with core.autocast():
        cache = core.new_cache(B, L + C, device=tokens.device)
        first = core(**inputs, cache=cache, logits_to_keep=1)  # (B, 1, V): predicts each completion's first token
        # always a copy (also for G = 1): the completions write their keys into it, the prompt pass saved its own
        cache, first = cache.repeat_interleave(group_size), first.repeat_interleave(group_size, dim=0)
        logits = first
        if C > 1:  # tokens 0..C-2 predict 1..C-1; their keys mask covers the prompt and the completion so far
            attn = torch.cat([inputs["attention_mask"].repeat_interleave(group_size, dim=0).bool(), mask[:, :-1]], 1)
            logits = torch.cat([first, model(input_ids=tokens[:, :-1], attention_mask=attn, cache=cache)], dim=1)
    # fp32 from here whatever the policy: softmax, log-probs and so the ratio, the KL and the loss (precision.py)
    logits = logits.float()
    if temperature and temperature != 1.0:
        logits = logits / temperature  # the sampler's distribution, so ratios compare like with like
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - logz
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = logz - (torch.softmax(logits, -1) * logits).sum(-1)
    return logp * mask, entropy


# ----------------------------------------------------------------------------------------------- one step

@dataclass
class GRPOConfig:
    group_size: int = 8            # G
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    beta: float = 0.04             # KL weight (paper / R1-V default)
    eps_low: float = 0.2
    eps_high: float = 0.2
    num_iterations: int = 1        # mu
    adv_scale: str = "group"       # group | batch | none
    loss_agg: str = "seq_mean"     # seq_mean | token_mean | constant
    mask_truncated: bool = False   # drop completions cut by max_new_tokens from the loss (DAPO overlong filter)
    micro_batch: int = 8           # completion rows per forward/backward in the update (whole groups, >= one)
    max_grad_norm: float = 1.0
    entropy_frac: float = 1.0      # < 1: the policy gradient on that top fraction of tokens by entropy only


def temporal_bonus(acc_ordered, acc_shuffled, group_size, alpha=0.3):
    """Video-R1's T-GRPO: per prompt, if the fraction correct with ordered frames beats that with shuffled frames,
    correct ordered completions get +alpha (the model is rewarded for using the temporal order)."""
    a = acc_ordered.view(-1, group_size)
    better = a.mean(1) > acc_shuffled.view(-1, group_size).mean(1)
    return (alpha * a * better.unsqueeze(1).to(a.dtype)).view(-1)


class Timer:
    """Wall time per phase of a step (rollout / logprob / update), for the log."""

    def __init__(self):
        self.t = {}

    @contextlib.contextmanager
    def __call__(self, name):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] = self.t.get(name, 0.0) + time.perf_counter() - start


def score(texts, rows, reward_fns, weights):
    """Rewards (N, F) of each function (name order of `weights`) and their weighted sum (N,)."""
    names = list(weights)
    per_fn = torch.tensor([[reward_fns[n](t, r) for n in names] for t, r in zip(texts, rows)], dtype=torch.float32)
    total = per_fn @ torch.tensor([weights[n] for n in names], dtype=torch.float32)
    return per_fn.view(len(texts), len(names)), total


def forking_tokens(entropy, mask, frac):
    """The top `frac` of the batch's completion tokens by the sampler's entropy (all ranks pooled): the "forking"
    tokens of Wang et al. 2025 (arXiv 2506.01939), who take the policy gradient on the top 20% only. After SFT
    nearly every token of a chain is certain (0.005 nats on the world) and the few uncertain ones (the answer
    letter, a colour, a turn) are where the reward is decided; under seq_mean each sequence's gradient is then
    shared by them rather than diluted over ~200 tokens. Returns the mask of those tokens."""
    import torch.distributed as dist
    values = entropy[mask].float()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, values.cpu())
        values = torch.cat(parts)
    if values.numel() == 0:
        return mask
    threshold = torch.quantile(values, 1.0 - frac).to(entropy.device)
    return mask & (entropy >= threshold)


def _global(x, op="sum"):
    """Sum (or max) of a number over all ranks (identity without a process group)."""
    import torch.distributed as dist
    t = torch.tensor(float(x), dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.item()


@torch.no_grad()
def rollout(model, batch, cfg, eos_token_ids, pad_token_id, generator=None, sync_ranks=False):
    """G completions per prompt: the prompt and its video are prefilled once and the KV cache is shared."""
    from st_r1.generate import generate
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return generate(model, **inputs, max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos_token_ids,
                    pad_token_id=pad_token_id, num_samples=cfg.group_size, temperature=cfg.temperature,
                    top_p=cfg.top_p, generator=generator, sync_ranks=sync_ranks)


def cat_generations(gens, pad_token_id):
    """One Generation from several (rows stacked, completions right-padded to the longest)."""
    from st_r1.generate import Generation
    if len(gens) == 1:
        return gens[0]
    width = max(g.tokens.shape[1] for g in gens)

    def pad(x, value):
        return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)
    entropy = None if any(g.entropy is None for g in gens) else torch.cat([pad(g.entropy, 0.0) for g in gens])
    return Generation(torch.cat([pad(g.tokens, pad_token_id) for g in gens]),
                      torch.cat([pad(g.logprobs, 0.0) for g in gens]), torch.cat([pad(g.mask, False) for g in gens]),
                      torch.cat([g.truncated for g in gens]), entropy)


def select_generation(gen, rows):
    """The given completion rows of a Generation, trimmed to their longest completion."""
    from st_r1.generate import Generation
    rows = torch.as_tensor(rows, dtype=torch.long)
    used = max(1, int(gen.mask[rows].sum(1).max()))
    return Generation(gen.tokens[rows, :used], gen.logprobs[rows, :used], gen.mask[rows, :used], gen.truncated[rows],
                      None if gen.entropy is None else gen.entropy[rows, :used])


def update(policy, ref_model, optimizer, prompts, gen, advantages, cfg, timer, step=None, blank=False):
    """mu optimiser steps on one rollout batch. prompts: the collated prompts, once each (gen has G rows per prompt).
    The loss normalisers are summed over ranks and micro-batches so every split gives the full-batch gradient.
    blank: this rank has no rows to learn from (dynamic sampling kept none of its groups); it makes the others'
    number of passes with the given rows at weight 0, so that every rank joins every collective."""
    import torch.distributed as dist
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    mask = gen.mask & ~gen.truncated.unsqueeze(1) if cfg.mask_truncated else gen.mask
    n_rows = 0 if blank else mask.shape[0]
    num_seqs, num_tokens = _global(n_rows), _global(0 if blank else mask.sum().item())
    pg_mask, pg_tokens = None, None
    if cfg.entropy_frac < 1:
        if gen.entropy is None:
            raise ValueError("entropy_frac < 1 needs the sampler's entropies (generate() returns them)")
        pg_mask = forking_tokens(gen.entropy, torch.zeros_like(mask) if blank else mask, cfg.entropy_frac)
        pg_tokens = _global(pg_mask.sum().item())
    G = cfg.group_size
    per = max(1, cfg.micro_batch // G)  # prompts per micro-batch: whole groups share one prompt pass
    n_prompts = prompts["input_ids"].shape[0]
    groups = [list(range(i, min(i + per, n_prompts))) for i in range(0, n_prompts, per)]
    chunks = [list(range(g[0] * G, (g[-1] + 1) * G)) for g in groups]  # their completion rows
    # Every rank makes the same number of passes (FSDP2 gathers in each; ranks may hold different numbers of
    # prompts): a rank with fewer repeats its first micro-batch with weight 0.
    n_passes = int(_global(0 if blank else len(chunks), "max"))
    ref_logp = None
    with timer("logprob"), torch.no_grad():
        if cfg.beta and ref_model is not None and not blank:
            ref_logp = torch.cat([completion_logprobs(ref_model, select_rows(prompts, g), gen.tokens[c], mask[c],
                                                      cfg.temperature, group_size=G)[0] for g, c in zip(groups, chunks)])
    # mu = 1: pi_old is the current policy, ratio = exp(logp - logp.detach()) = 1 (the authors' setting).
    # mu > 1: pi_old is the policy that sampled, whose log-probs the sampler already returned.
    old_logp = gen.logprobs if cfg.num_iterations > 1 else None
    stats = dict(kl=0.0, clip_low=0.0, clip_high=0.0, entropy=0.0, loss=0.0, grad_norm=0.0,
                 pg_token_frac=1.0 if pg_mask is None else pg_tokens / max(num_tokens, 1))
    policy.train()
    for it in range(cfg.num_iterations):
        optimizer.zero_grad(set_to_none=True)
        with timer("update"):
            for k in range(n_passes):
                pad = blank or k >= len(chunks)
                g, c = (groups[0], chunks[0]) if pad else (groups[k], chunks[k])
                sync = k == n_passes - 1 or not hasattr(policy, "no_sync")
                ctx = torch.enable_grad() if sync else policy.no_sync()
                with ctx:
                    logp, ent = completion_logprobs(policy, select_rows(prompts, g), gen.tokens[c], mask[c],
                                                    cfg.temperature, with_entropy=(it == 0), group_size=G)
                    old = old_logp[c] if old_logp is not None else logp.detach()
                    loss, st = grpo_loss(logp, old, None if ref_logp is None else ref_logp[c], advantages[c],
                                         mask[c], cfg.eps_low, cfg.eps_high, cfg.beta, cfg.loss_agg,
                                         cfg.max_new_tokens, num_seqs, num_tokens,
                                         None if pg_mask is None else pg_mask[c], pg_tokens)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(f"non-finite GRPO loss at step {step}, iteration {it}, "
                                                 f"micro-batch rows {c[0]}..{c[-1]}: nothing was updated")
                    # DDP averages gradients over ranks; the normalisers are already global, so undo the average
                    (loss * (0.0 if pad else world)).backward()
                if pad:
                    continue
                w = mask[c].sum().item() / max(mask.sum().item(), 1)
                # the clip can bind only from the second iteration on (pi_theta = pi_old in the first): its
                # fractions are the mean over the mu iterations; the KL and the entropy are the sampler's
                for key in ("clip_low", "clip_high"):
                    stats[key] += st[key] * w / cfg.num_iterations
                if it == 0:
                    stats["kl"] += st["kl"] * w
                    stats["entropy"] += (ent * mask[c]).sum().item() / max(mask.sum().item(), 1)
                stats["loss"] += loss.item() / cfg.num_iterations
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradient norm at step {step}, iteration {it}")
            optimizer.step()
        stats["grad_norm"] = float(grad_norm)
    optimizer.zero_grad(set_to_none=True)  # free the gradients: the next rollout (its KV cache) needs none
    return stats

