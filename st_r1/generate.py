"""Batched greedy / temperature + top-p decoding with the pre-allocated KV cache.

The prompt (and its video) is prefilled once; the cache is then repeated num_samples times, so G samples of a
GRPO group share one vision-tower and prompt pass.
"""
from dataclasses import dataclass

import torch

from st_r1.kvcache import group_rows


@dataclass
class Generation:
    tokens: torch.Tensor     # (N, C) long, pad_token_id after EOS
    logprobs: torch.Tensor   # (N, C) float32, log p(token) under the sampling distribution's temperature, 0 at pad
    mask: torch.Tensor       # (N, C) bool, real completion tokens (EOS included)
    truncated: torch.Tensor  # (N,) bool, no EOS within max_new_tokens
    entropy: torch.Tensor = None  # (N, C) float32, entropy (nats) of the tempered distribution each token came from


def pick(logits, temperature=0.0, top_p=1.0, generator=None, banned=()):
    """Next token and its log-prob: greedy (log_softmax of raw logits) or a sample from softmax(logits / T)
    restricted to the smallest set of tokens with probability >= top_p (nucleus sampling, Holtzman et al. 2020).
    `banned` tokens are never chosen (the image/video placeholders: a completion holding one could not be re-read).
    Returns (token, its log-prob, the distribution's entropy), both of the full tempered distribution: the log-prob is
    the one a policy-gradient loss recomputes, the entropy what GRPO's --entropy-frac ranks tokens by."""
    logits = logits.float()
    if temperature == 0:
        tok = logits.index_fill(-1, torch.tensor(banned, dtype=torch.long, device=logits.device), -torch.inf)
        tok = tok.argmax(-1)
        logp = logits.log_softmax(-1)
        return tok, logp.gather(-1, tok[:, None])[:, 0], -(logp.exp() * logp).nan_to_num().sum(-1)
    logp = (logits / temperature).log_softmax(-1)
    probs = logp.exp().index_fill(-1, torch.tensor(banned, dtype=torch.long, device=logits.device), 0.0)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # mass before this token already reaches top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    if isinstance(generator, (list, tuple)):
        # one generator per prompt, drawing for that prompt's rows: samples depend on the prompt, not on which
        # other prompts share the batch (so a run split over ranks samples exactly as one process does)
        rows = probs.shape[0] // len(generator)
        u = torch.cat([torch.rand(rows, 1, generator=g, device=probs.device) for g in generator])
    else:
        u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device)
    # inverse-CDF sampling, one uniform per row: the law of torch.multinomial, whose CPU kernel draws an exponential
    # for every token of the vocabulary (a sixth of a GRPO rollout, bench/RESULTS.md). The first token whose
    # cumulative mass exceeds u * total: a token of zero probability never is (its cdf equals the one before it).
    cdf = probs.cumsum(-1)
    total = cdf[:, -1:]
    x = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))  # < total: never past the last
    tok = torch.searchsorted(cdf, x, right=True)[:, 0]
    return tok, logp.gather(-1, tok[:, None])[:, 0], -(logp.exp() * logp).nan_to_num().sum(-1)


@torch.no_grad()
def generate(model, input_ids, attention_mask, *, max_new_tokens, eos_token_ids, pad_token_id, num_samples=1,
             temperature=0.0, top_p=1.0, generator=None, progress=False, sync_ranks=False, **vision_kwargs):
    """Rows prompt-major: row i*num_samples+g is sample g of prompt i. Left-padded prompts.
    sync_ranks: under FSDP every forward is a collective, so all ranks decode until every rank is done."""
    B, P = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    eos = torch.tensor(sorted(set(eos_token_ids if not isinstance(eos_token_ids, int) else [eos_token_ids])),
                       device=input_ids.device)
    banned = [model.image_token_id, model.video_token_id]
    N = B * num_samples
    tokens = torch.full((N, max_new_tokens), pad_token_id, dtype=torch.long, device=input_ids.device)
    logprobs = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=input_ids.device)
    entropy = torch.zeros(N, max_new_tokens, dtype=torch.float32, device=input_ids.device)
    mask = torch.zeros(N, max_new_tokens, dtype=torch.bool, device=input_ids.device)
    done = torch.zeros(N, dtype=torch.bool, device=input_ids.device)
    steps = range(max_new_tokens)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="generate", leave=False)
    # One autocast region over the whole decode (bf16-mixed): each trainable fp32 weight is cast to bf16 once per
    # call, not once per token (autocast caches those casts until its outermost region ends). pick() has no matmul
    # and upcasts the logits first, so its softmax and log-probs stay fp32 inside the region.
    with model.autocast():
        cache = model.new_cache(B, P + max_new_tokens, device=input_ids.device)
        logits = model(input_ids, attention_mask=attention_mask, cache=cache, logits_to_keep=1, **vision_kwargs)[:, -1]
        if num_samples > 1:
            cache = cache.share(num_samples)
            logits = logits.repeat_interleave(num_samples, dim=0)
        used = 0
        rows = torch.arange(N, device=input_ids.device)  # the rows in the batch: those of the prompts still decoding
        gens = list(generator) if isinstance(generator, (list, tuple)) else generator
        for t in steps:
            tok, lp, ent = pick(logits, temperature, top_p, gens, banned)
            off = done[rows]
            tokens[rows, t] = tok.masked_fill(off, pad_token_id)
            logprobs[rows, t] = lp.masked_fill(off, 0.0)
            entropy[rows, t] = ent.masked_fill(off, 0.0)
            mask[rows, t] = ~off
            done[rows] = off | torch.isin(tok, eos)
            used = t + 1
            if t + 1 == max_new_tokens or _all_done(done, sync_ranks):
                break
            # a prompt whose samples have all ended leaves the batch (a third of the decoding steps of a GRPO
            # rollout, bench/RESULTS.md); a row that ended beside unfinished samples of its prompt decodes padding
            # and is discarded, so with one generator per prompt (GRPO's) each draws for all of its rows and the
            # samples do not depend on when other prompts end. The cache is copied when an eighth or more can go.
            going = ~done[rows].view(-1, num_samples).all(1)
            if 0 < int(going.sum()) <= len(going) * 7 // 8:
                keep = going.nonzero()[:, 0]
                sub = group_rows(keep, num_samples)
                cache = cache.select(sub)
                rows = rows[sub]
                if isinstance(gens, list):
                    gens = [gens[i] for i in keep.tolist()]
            logits = model(tokens[rows, t:t + 1], cache=cache, logits_to_keep=1)[:, -1]
    return Generation(tokens[:, :used], logprobs[:, :used], mask[:, :used], ~done, entropy[:, :used])


def _all_done(done, sync_ranks):
    finished = bool(done.all())
    if sync_ranks:
        import torch.distributed as dist
        flag = torch.tensor([0 if finished else 1], device=done.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        finished = flag.item() == 0
    return finished

