"""GRPO end to end on a toy task whose reward must rise: rollout -> rewards -> advantages -> update."""
import torch
import transformers as tf

from st_r1 import grpo
from st_r1.model import VideoLM

B_TOKEN = 5  # "answering B": the toy reward is 1 when the completion's first token is this one


def toy_model():
    cfg = tf.Qwen2VLConfig(text_config=dict(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                                            pad_token_id=0, bos_token_id=1, eos_token_id=27,
                                            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                             "mrope_section": [1, 1, 2]}),
                           vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2),
                           image_token_id=30, video_token_id=31, vision_start_token_id=29, vision_end_token_id=28)
    torch.manual_seed(0)
    return VideoLM.from_config(cfg.to_dict())


LETTERS = (3, 4, 5, 6)  # the toy's "A".."D"; prompt i names LETTERS[i] in its last token


def learn(sign=1.0, steps=30, beta=0.0, num_iterations=1, model=None, ref=None, reward_fn=None, lr=1e-2):
    """A few dozen GRPO steps (rollout -> reward -> group advantages -> update) on 4 prompts, each naming a letter:
    reward 1 when the completion's first token is the prompt's letter. sign=-1 flips the advantages. Returns the
    model, the sampled reward and the logged KL per step. (At lr 2e-2 one prompt's letter could fall back to 0
    after it was learned, for some of the samplers' seeds: 1e-2 reached > 0.9 for each of the six tried.)"""
    model = model or toy_model()
    cfg = grpo.GRPOConfig(group_size=16, max_new_tokens=3, beta=beta, micro_batch=64, num_iterations=num_iterations)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    prompts = dict(input_ids=torch.tensor([[1, 2, 7, t] for t in LETTERS]),
                   attention_mask=torch.ones(4, 4, dtype=torch.long))
    want = torch.tensor(LETTERS).repeat_interleave(cfg.group_size)
    curve, kls = [], []
    for step in range(steps):
        model.eval()
        gens = [torch.Generator().manual_seed(1000 * step + i) for i in range(4)]
        gen = grpo.rollout(model, prompts, cfg, eos_token_ids=[27], pad_token_id=0, generator=gens)
        reward = (gen.tokens[:, 0] == want).float() if reward_fn is None else reward_fn(gen)
        adv, _ = grpo.group_advantages(reward, cfg.group_size)
        stats = grpo.update(model, ref, opt, prompts, gen, sign * adv, cfg, grpo.Timer(), step)
        curve.append(reward.mean().item())
        kls.append(stats["kl"])
    return model, curve, kls


def show(curve):
    return " ".join(f"{c:.2f}" for c in curve)


def test_grpo_learns_the_named_letter_and_unlearns_it_with_the_sign_flipped():
    """The loop learns, not only computes a gradient: the sampled reward goes from chance (1 in 32 tokens) to near 1
    in 30 steps, and with the advantages negated (the same run otherwise) it goes down. Fails if the advantage or
    the ratio is wired backwards (either flips the gradient), also with mu = 2 where pi_old is the sampler's."""
    for mu in (1, 2):
        _, up, _ = learn(num_iterations=mu)
        _, down, _ = learn(sign=-1.0, num_iterations=mu)
        assert sum(up[:3]) / 3 < 0.15 and sum(up[-5:]) / 5 > 0.9, (mu, show(up))
        assert sum(down[-5:]) / 5 < sum(down[:3]) / 3 / 2 and sum(down[-5:]) / 5 < 0.03, (mu, show(down))


def test_kl_term_pulls_the_policy_back_to_the_reference():
    """With no reward signal (all rewards equal) and beta = 1, the update only minimises KL(policy || ref): the KL of
    a policy trained away from the reference falls. Fails if the KL term is added with the wrong sign (it grows)."""
    import copy
    ref = toy_model().eval().requires_grad_(False)
    moved, _, _ = learn(steps=15)  # the same init as ref, then trained towards the letters
    flat = lambda gen: torch.zeros(gen.tokens.shape[0])  # noqa: E731
    _, _, kls = learn(steps=25, beta=1.0, model=copy.deepcopy(moved), ref=ref, reward_fn=flat, lr=1e-2)
    assert kls[0] > 0.3 and sum(kls[-3:]) / 3 < kls[0] / 4, show(kls)


def test_sampler_logprobs_are_the_policy_logprobs():
    """The log-probs the sampler returns are what completion_logprobs recomputes (so mu > 1 can use them as pi_old)."""
    model = toy_model().eval()
    prompts = dict(input_ids=torch.tensor([[0, 2, 3], [4, 6, 7]]), attention_mask=torch.tensor([[0, 1, 1], [1, 1, 1]]))
    cfg = grpo.GRPOConfig(group_size=3, max_new_tokens=6, temperature=0.7)
    gen = grpo.rollout(model, prompts, cfg, eos_token_ids=[27], pad_token_id=0, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logp, _ = grpo.completion_logprobs(model, grpo.repeat_rows(prompts, 3), gen.tokens, gen.mask, 0.7)
    assert torch.allclose(logp, gen.logprobs * gen.mask, atol=1e-5)


def full_logprobs(model, prompts, tokens, mask):
    """Reference: every (prompt, completion) pair run as one sequence, no cache."""
    C = tokens.shape[1]
    ids = torch.cat([prompts["input_ids"], tokens], 1)
    attn = torch.cat([prompts["attention_mask"], mask.long()], 1)
    vision = {k: v for k, v in prompts.items() if k not in ("input_ids", "attention_mask")}
    logits = model(input_ids=ids, attention_mask=attn, logits_to_keep=C + 1, **vision)[:, :-1].float()
    return (logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]) * mask


def test_shared_prompt_pass_equals_full_sequences_values_and_gradients():
    """completion_logprobs runs each prompt (with its video) once for its G completions: log-probs and the gradient
    of every parameter, vision tower included, equal those of G full (prompt + completion) sequences."""
    model = toy_model()
    v = 31
    ids = torch.tensor([[0, 0, 1, 29, v, v, v, v, 28, 2], [1, 29, v, v, v, v, 28, 3, 4, 5]])
    prompts = dict(input_ids=ids, attention_mask=(torch.arange(10) >= torch.tensor([[2], [0]])).long(),
                   pixel_values_videos=torch.randn(32, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0)),
                   video_grid_thw=torch.tensor([[1, 4, 4], [1, 4, 4]]))
    G, C = 3, 5
    tokens = torch.randint(2, 27, (2 * G, C), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2 * G, C, dtype=torch.bool)
    mask[1, 2:] = False  # an early EOS: padding after it
    mask[4, 4:] = False
    weights = torch.randn(2 * G, C, generator=torch.Generator().manual_seed(2))
    grads = []
    for shared in (True, False):
        model.zero_grad()
        if shared:
            logp, _ = grpo.completion_logprobs(model, prompts, tokens, mask, group_size=G)
        else:
            logp = full_logprobs(model, grpo.repeat_rows(prompts, G), tokens, mask)
        (logp * weights).sum().backward()
        grads.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (a, ga), (b, gb) = grads
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    assert ga.keys() == gb.keys() and any(n.startswith("visual.") for n in ga)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-5, rtol=1e-4), (n, (ga[n] - gb[n]).abs().max())
