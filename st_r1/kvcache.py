"""The KV cache of decoding: pre-allocated per row, or one copy of each prompt shared by its G samples."""
import torch


def group_rows(prompts, group):
    """The rows of the given prompts' groups of `group` rows each, in order: prompt i -> rows i*group .. +group-1."""
    return (prompts[:, None] * group + torch.arange(group, device=prompts.device)).flatten()


class KVCache:
    """Pre-allocated keys/values (B, kv_heads, max_len, head_dim) per layer, the key mask, and per row the
    M-RoPE position of the next token (text after a video continues from the video's largest position + 1).
    A shared cache (share()) keeps one copy of each prompt's keys/values (prefix_k/v) for its `group` rows and
    per row only the tokens decoded after it (k/v, from slot prefix_len on)."""

    def __init__(self, k, v, mask, next_pos, length=0, prefix_k=None, prefix_v=None):
        self.k, self.v, self.mask, self.next_pos, self.length = k, v, mask, next_pos, length
        self.prefix_k, self.prefix_v = prefix_k, prefix_v

    @property
    def max_len(self):
        return self.mask.shape[1]

    @property
    def group(self):
        """Rows per prompt (1 for a cache that is not shared)."""
        return self.k[0].shape[0] // self.prefix_k[0].shape[0] if self.prefix_k is not None else 1

    @property
    def prefix_len(self):
        return self.prefix_k[0].shape[2] if self.prefix_k is not None else 0

    def select(self, rows):
        """A cache of the given rows, in that order (of a shared cache: whole groups). New tensors, never views:
        later steps write into them in place, which autograd forbids on views (the GRPO update runs with grad)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.mask.device)
        filled = self.length - self.prefix_len

        def pick(t, idx, n):  # only the filled slots are copied: the rest are written before they are read
            out = t.new_empty((len(idx),) + t.shape[1:])
            out[:, :, :n] = t[:, :, :n].index_select(0, idx)
            return out
        prefix_k = prefix_v = None
        if self.prefix_k is not None:
            prompts = rows[::self.group] // self.group
            if not torch.equal(rows, group_rows(prompts, self.group)):
                raise ValueError("a shared KV cache is cut down by whole groups of rows")
            prefix_k = [t.index_select(0, prompts) for t in self.prefix_k]
            prefix_v = [t.index_select(0, prompts) for t in self.prefix_v]
        return KVCache([pick(t, rows, filled) for t in self.k], [pick(t, rows, filled) for t in self.v],
                       self.mask.index_select(0, rows), self.next_pos.index_select(0, rows), self.length,
                       prefix_k, prefix_v)

    def repeat_interleave(self, n):
        """Row i -> rows i*n .. i*n+n-1, each with its own copy of the prompt (the GRPO update's cache)."""
        return self.select(torch.arange(self.mask.shape[0]).repeat_interleave(n))

    def share(self, n):
        """Row i -> rows i*n .. i*n+n-1 that read one copy of prompt i's keys/values (decoding only). A decoding
        step reads the whole cache and does little else, so G samples of a ~300-token video prompt read it once
        instead of G times (bench/RESULTS.md, "30 steps, and a rollout that makes room for them")."""
        rows = torch.arange(self.mask.shape[0], device=self.mask.device).repeat_interleave(n)
        B, kv, _, D = self.k[0].shape
        rest = lambda t: t.new_empty((B * n, kv, self.max_len - self.length, D))
        return KVCache([rest(t) for t in self.k], [rest(t) for t in self.v], self.mask.index_select(0, rows),
                       self.next_pos.index_select(0, rows), self.length,
                       [t[:, :, :self.length] for t in self.k], [t[:, :, :self.length] for t in self.v])


def shared_prefix_attention(q, pk, pv, k, v, mask, group):
    """One decoding step's attention for rows that share a prompt: q (N, H, 1, D) with N = B * group; pk, pv
    (B, kv, P, D) the prompts' keys/values; k, v (N, kv, T, D) each row's own; mask (N, 1, 1, P + T). The scores
    over the prompt are one matmul per prompt for all its rows' query heads; one softmax over both parts."""
    N, H, _, D = q.shape
    B, kv, P, _ = pk.shape
    g = H // kv
    qg = q.view(B, group, kv, g, D).transpose(1, 2).reshape(B, kv, group * g, D)  # a prompt's queries, by kv head
    sp = (qg @ pk.transpose(-1, -2)).view(B, kv, group, g, P).transpose(1, 2).reshape(N, kv, g, P)
    ss = q.view(N, kv, g, D) @ k.transpose(-1, -2)  # (N, kv, g, T)
    scores = torch.cat([sp, ss], -1).float() * D ** -0.5
    w = scores.masked_fill(~mask.view(N, 1, 1, -1), -torch.inf).softmax(-1).to(q.dtype)
    wp = w[..., :P].reshape(B, group, kv, g, P).transpose(1, 2).reshape(B, kv, group * g, P)
    op = (wp @ pv).view(B, kv, group, g, D).transpose(1, 2).reshape(N, kv, g, D)
    return (op + w[..., P:] @ v).reshape(N, H, 1, D)
