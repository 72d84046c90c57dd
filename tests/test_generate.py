"""generate(): cached decoding == transformers' generate == our own full recompute; log-probs == a fresh forward."""
import pytest
import torch

from st_r1.generate import generate, pick
from st_r1.model import VideoLM
from tests.test_model import hf_model, left_pad, type_ids, video_prompt

EOS, PAD = 2, 0


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def pair(request, tmp_path_factory):
    ref = hf_model(request.param, tied=False)
    path = str(tmp_path_factory.mktemp(request.param))
    ref.save_pretrained(path)
    return ref, VideoLM.from_pretrained(path)


def batch():
    r1, p1, g1 = video_prompt([(2, 6, 4)], pre=(5, 6, 7, 8, 9, 10, 11), seed=4)
    r2, p2, g2 = video_prompt([(1, 4, 4)], pre=(5,), post=(6,), seed=5)
    ids, mask = left_pad([r1, r2])
    return ids, mask, dict(pixel_values_videos=torch.cat([p1, p2]), video_grid_thw=torch.cat([g1, g2]),
                           second_per_grid_ts=torch.tensor([0.5, 1.0]))


def recompute(model, ids, mask, tokens, vision):
    """Full forward (no cache) over prompt + completion: logits predicting each completion token."""
    full = torch.cat([ids, tokens], 1)
    fmask = torch.cat([mask, torch.ones_like(tokens)], 1)
    with torch.no_grad():
        return model(full, attention_mask=fmask, **vision)[:, ids.shape[1] - 1:-1].float()


def test_greedy_matches_transformers_and_recompute(pair):
    ref, ours = pair
    ids, mask, vision = batch()
    out = generate(ours, ids, mask, max_new_tokens=20, eos_token_ids=[EOS], pad_token_id=PAD, **vision)
    hf_vision = vision if ours.model_type == "qwen2_5_vl" else {k: v for k, v in vision.items() if "second" not in k}
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=type_ids(ids), max_new_tokens=20,
                            do_sample=False, eos_token_id=EOS, suppress_tokens=[ours.image_token_id, ours.video_token_id], pad_token_id=PAD, **hf_vision)[:, ids.shape[1]:]
    got = torch.full((2, 20), PAD)
    got[:, :out.tokens.shape[1]] = out.tokens
    want = torch.cat([want, torch.full((2, 20 - want.shape[1]), PAD)], 1)
    assert torch.equal(got, want)
    # every step equals the argmax of a full recompute without cache (rows before their EOS)
    logits = recompute(ours, ids, mask, out.tokens, vision)
    choice = logits.index_fill(-1, torch.tensor([ours.image_token_id, ours.video_token_id]), -torch.inf).argmax(-1)
    assert torch.equal(choice[out.mask], out.tokens[out.mask])
    assert len(set(out.tokens[out.mask].tolist())) > 1
    lp = logits.log_softmax(-1).gather(-1, out.tokens[..., None])[..., 0]
    assert (lp[out.mask] - out.logprobs[out.mask]).abs().max() < 1e-5
    assert torch.equal(out.truncated, ~(out.tokens == EOS).any(1))


def test_sampled_logprobs_match_fresh_forward(pair):
    _, ours = pair
    ids, mask, vision = batch()
    g = torch.Generator().manual_seed(0)
    out = generate(ours, ids, mask, max_new_tokens=12, eos_token_ids=[EOS, 3], pad_token_id=PAD, num_samples=3,
                   temperature=0.8, top_p=0.95, generator=g, **vision)
    assert out.tokens.shape[0] == 6 and out.logprobs.dtype == torch.float32
    rep = lambda t: t.repeat_interleave(3, 0)
    vision3 = dict(pixel_values_videos=torch.cat([vision["pixel_values_videos"][:48]] * 3 +
                                                 [vision["pixel_values_videos"][48:]] * 3),
                   video_grid_thw=rep(vision["video_grid_thw"]), second_per_grid_ts=rep(vision["second_per_grid_ts"]))
    logits = recompute(ours, rep(ids), rep(mask), out.tokens, vision3)
    lp = (logits / 0.8).log_softmax(-1).gather(-1, out.tokens[..., None])[..., 0]
    assert (lp[out.mask] - out.logprobs[out.mask]).abs().max() < 1e-5
    assert (out.logprobs[~out.mask] == 0).all() and (out.tokens[~out.mask] == PAD).all()
    # after the first EOS nothing but padding; mask ends right at the EOS
    for row, m in zip(out.tokens, out.mask):
        n = int(m.sum())
        assert (row[n:] == PAD).all()
    # samples of one prompt differ somewhere (they are sampled, not copied)
    assert not torch.equal(out.tokens[0], out.tokens[1]) or not torch.equal(out.tokens[1], out.tokens[2])


def test_num_samples_share_the_prompt(pair):
    _, ours = pair
    ids, mask, vision = batch()
    one = generate(ours, ids, mask, max_new_tokens=8, eos_token_ids=[EOS], pad_token_id=PAD, **vision)
    many = generate(ours, ids, mask, max_new_tokens=8, eos_token_ids=[EOS], pad_token_id=PAD, num_samples=4, **vision)
    assert torch.equal(many.tokens, one.tokens.repeat_interleave(4, 0))
    assert torch.allclose(many.logprobs, one.logprobs.repeat_interleave(4, 0))


def test_stop_at_eos_and_truncation():
    torch.manual_seed(0)
    model = VideoLM.from_config(hf_model("qwen2_vl").config.to_dict())
    with torch.no_grad():  # all-zero logits: greedy always picks token 0
        model.lm_head.weight.zero_()
    ids = torch.tensor([[5, 6, 9]])
    out = generate(model, ids, None, max_new_tokens=5, eos_token_ids=[EOS], pad_token_id=PAD)
    assert out.tokens.shape == (1, 5) and out.truncated.tolist() == [True]  # token 0 is not EOS here
    out = generate(model, ids, None, max_new_tokens=5, eos_token_ids=[0], pad_token_id=PAD)
    assert out.tokens.tolist() == [[0]] and out.mask.tolist() == [[True]] and out.truncated.tolist() == [False]


def test_pick_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    g = torch.Generator().manual_seed(0)
    seen = {int(pick(logits, 1.0, 0.7, g)[0]) for _ in range(200)}
    assert seen == {0, 1}  # 0.5 < 0.7, 0.5 + 0.3 >= 0.7: the nucleus is {0, 1}
    tok, lp, _ = pick(logits, 1.0, 1.0, g)
    assert torch.allclose(lp, logits.log_softmax(-1)[0, tok])


def test_prompts_that_end_leave_the_batch_and_sample_as_alone(pair):
    """A prompt whose samples all ended leaves the decoding batch (the cache is cut down), and with one generator per
    prompt each prompt's samples and log-probs are those it gets decoded alone: what the others do does not leak."""
    _, ours = pair
    ids, mask, vision = batch()
    eos = list(range(8, 40))  # many end tokens: samples end after a few steps, at different steps
    kw = dict(max_new_tokens=16, eos_token_ids=eos, pad_token_id=PAD, num_samples=4, temperature=1.0)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (3, 4)]
    rows = []
    hook = ours.model.embed_tokens.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    both = generate(ours, ids, mask, generator=gens(), **kw, **vision)
    hook.remove()
    assert rows[1] == 8 and 4 in rows, rows  # 8 rows decoding, then only one prompt's 4
    n_patches = [48, 16]
    for i, g in enumerate(gens()):
        start = sum(n_patches[:i])
        one = dict(pixel_values_videos=vision["pixel_values_videos"][start:start + n_patches[i]],
                   video_grid_thw=vision["video_grid_thw"][i:i + 1],
                   second_per_grid_ts=vision["second_per_grid_ts"][i:i + 1])
        alone = generate(ours, ids[i:i + 1], mask[i:i + 1], generator=[g], **kw, **one)
        n = alone.tokens.shape[1]
        mine = slice(4 * i, 4 * i + 4)
        assert torch.equal(both.tokens[mine, :n], alone.tokens) and not both.mask[mine, n:].any()
        assert (both.logprobs[mine, :n] - alone.logprobs).abs().max() < 1e-5
