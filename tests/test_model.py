"""Our Qwen2-VL / Qwen2.5-VL against transformers (the reference), on tiny random checkpoints saved by transformers."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from st_r1.model import VideoLM

IMG, VID, VSTART, VEND = 290, 291, 292, 293
PATCH = 3 * 2 * 14 * 14
TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]})
TOKENS = dict(image_token_id=IMG, video_token_id=VID, vision_start_token_id=VSTART, vision_end_token_id=VEND)


def hf_model(model_type, tied=None):
    import transformers as tf
    torch.manual_seed(0)
    if model_type == "qwen2_vl":
        cfg = tf.Qwen2VLConfig(text_config=TEXT, vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2,
                                                                    mlp_ratio=2), **TOKENS)
        model = tf.Qwen2VLForConditionalGeneration(cfg)
    else:  # windows of 56 px = 2 merged tokens; block 1 is full attention; tied embeddings unless asked
        cfg = tf.Qwen2_5_VLConfig(text_config=TEXT, vision_config=dict(
            depth=2, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, window_size=56,
            fullatt_block_indexes=[1], tokens_per_second=2), tie_word_embeddings=tied is not False, **TOKENS)
        model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
    with torch.no_grad():  # every weight, bias and norm random so that no term can hide
        for name, p in model.named_parameters():
            is_norm = p.ndim == 1 and ("norm" in name or "ln_q" in name)
            p.copy_(torch.randn_like(p) * (0.2 if p.ndim == 1 else 0.08) + float(is_norm))
        if not cfg.tie_word_embeddings:  # scales at which greedy decoding does not just repeat one token
            model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
            model.lm_head.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=["qwen2_vl", "qwen2_5_vl"])
def pair(request, tmp_path_factory):
    ref = hf_model(request.param)
    path = str(tmp_path_factory.mktemp(request.param))
    ref.save_pretrained(path)
    return ref, VideoLM.from_pretrained(path), path


def video_prompt(grids, pre=(5, 6, 7), post=(8, 9), seed=0):
    """Token ids with one <vision_start><video_pad>*n<vision_end> per grid, and random patches."""
    g = torch.Generator().manual_seed(seed)
    ids, pix = list(pre), []
    for t, h, w in grids:
        ids += [VSTART] + [VID] * (t * h * w // 4) + [VEND] + [10 + len(pix)]
        pix.append(torch.randn(t * h * w, PATCH, generator=g))
    return ids + list(post), torch.cat(pix), torch.tensor(grids)


def left_pad(rows):
    L = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def type_ids(ids):
    return (ids == IMG).long() + 2 * (ids == VID).long()


def both(ref, ours, ids, mask=None, spg=None, **vision):
    extra = {"second_per_grid_ts": spg} if (spg is not None and ours.model_type == "qwen2_5_vl") else {}
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, mm_token_type_ids=type_ids(ids), **vision, **extra).logits
        b = ours(ids, attention_mask=mask, second_per_grid_ts=spg, **vision)
    return a, b


def test_text_only(pair):
    ref, ours, _ = pair
    ids = torch.randint(3, 280, (2, 17), generator=torch.Generator().manual_seed(1))
    a, b = both(ref, ours, ids)
    assert (a - b).abs().max() < 1e-4
    # logits_to_keep
    assert torch.allclose(ours(ids, logits_to_keep=3), b[:, -3:], atol=1e-6)  # fewer rows: other blocking


def test_text_only_left_padding(pair):
    ref, ours, _ = pair
    ids, mask = left_pad([[5, 6, 7, 8, 9, 10, 11], [12, 13, 14]])
    pos = (mask.cumsum(1) - 1).clamp(min=0)  # transformers' forward ignores the mask for text-only positions
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        b = ours(ids, attention_mask=mask)
    real = mask.bool()
    assert (a[real] - b[real]).abs().max() < 1e-4


def test_one_image(pair):
    ref, ours, _ = pair
    g = torch.Generator().manual_seed(2)
    ids = torch.tensor([[5, 6, VSTART] + [IMG] * 9 + [VEND, 7, 8, 9]])
    a, b = both(ref, ours, ids, pixel_values=torch.randn(36, PATCH, generator=g), image_grid_thw=torch.tensor([[1, 6, 6]]))
    assert (a - b).abs().max() < 1e-4


def test_one_video(pair):
    ref, ours, _ = pair
    ids, pix, grid = video_prompt([(2, 6, 4)])
    a, b = both(ref, ours, torch.tensor([ids]), spg=torch.tensor([1.0]), pixel_values_videos=pix, video_grid_thw=grid)
    assert (a - b).abs().max() < 1e-4


def test_two_videos_and_an_image(pair):
    ref, ours, _ = pair
    ids, pix, grid = video_prompt([(2, 6, 4), (2, 4, 4)])
    ids = ids[:3] + [VSTART] + [IMG] * 4 + [VEND] + ids[3:]
    img = torch.randn(16, PATCH, generator=torch.Generator().manual_seed(3))
    a, b = both(ref, ours, torch.tensor([ids]), spg=torch.tensor([1.0, 0.5]), pixel_values_videos=pix,
                video_grid_thw=grid, pixel_values=img, image_grid_thw=torch.tensor([[1, 4, 4]]))
    assert (a - b).abs().max() < 1e-4


def test_batch_left_padding(pair):
    ref, ours, _ = pair
    r1, p1, g1 = video_prompt([(2, 6, 4)], pre=(5, 6, 7, 8, 9, 10, 11), seed=4)
    r2, p2, g2 = video_prompt([(1, 4, 4)], pre=(5,), post=(6,), seed=5)
    ids, mask = left_pad([r1, r2])
    vision = dict(pixel_values_videos=torch.cat([p1, p2]), video_grid_thw=torch.cat([g1, g2]))
    a, b = both(ref, ours, ids, mask, spg=torch.tensor([0.5, 1.0]), **vision)
    real = mask.bool()
    assert (a[real] - b[real]).abs().max() < 1e-4
    # each row alone gives the same logits as in the padded batch
    alone = ours(torch.tensor([r2]), pixel_values_videos=p2, video_grid_thw=g2, second_per_grid_ts=torch.tensor([1.0]))
    assert (alone[0] - b[1, real[1]]).abs().max() < 1e-4


def test_rope_index_by_hand():
    """Qwen2.5-VL: time index = floor(i * second_per_grid * tokens_per_second); text resumes at max + 1 (as the
    released Qwen code and vLLM; transformers 5 resumes at start + max(h, w) / 2 instead)."""
    model = VideoLM.from_config(hf_model("qwen2_5_vl").config.to_dict())
    ids = torch.tensor([[5, VSTART] + [VID] * 3 + [VEND, 6]])
    pos, nxt = model.rope_index(ids, torch.ones_like(ids, dtype=torch.bool), video_grid_thw=torch.tensor([[3, 2, 2]]),
                                second_per_grid_ts=torch.tensor([1.5]))
    assert pos[0, 0].tolist() == [0, 1, 2, 5, 8, 9, 10]
    assert pos[1, 0].tolist() == [0, 1, 2, 2, 2, 9, 10] and pos[2, 0].tolist() == [0, 1, 2, 2, 2, 9, 10]
    assert nxt.tolist() == [11]


def test_save_roundtrip_to_transformers(pair, tmp_path):
    ref, ours, _ = pair
    ours.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    back = type(ref).from_pretrained(str(tmp_path)).eval()
    ids, pix, grid = video_prompt([(2, 6, 4)])
    a, b = both(back, ours, torch.tensor([ids]), spg=torch.tensor([1.0]), pixel_values_videos=pix, video_grid_thw=grid)
    assert (a - b).abs().max() < 1e-4
    again = VideoLM.from_pretrained(str(tmp_path))
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), ours.state_dict().values()))


def test_transformers5_in_memory_names(pair, tmp_path):
    ref, ours, path = pair
    sd = load_file(os.path.join(path, "model.safetensors"))
    renamed = {("model.language_model." + k[6:] if k.startswith("model.") else
                "model." + k if k.startswith("visual.") else k): v for k, v in sd.items()}
    assert any(k.startswith("model.visual.") for k in renamed)
    save_file(renamed, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    again = VideoLM.from_pretrained(str(tmp_path))
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), ours.state_dict().values()))


def _copy(path, dst, sd=None, config=None):
    os.makedirs(dst, exist_ok=True)
    save_file(sd if sd is not None else load_file(os.path.join(path, "model.safetensors")),
              os.path.join(dst, "model.safetensors"))
    with open(os.path.join(dst, "config.json"), "w") as f:
        json.dump(config or json.load(open(os.path.join(path, "config.json"))), f)
    return dst


def test_load_errors_name_file_and_tensor(pair, tmp_path):
    ref, _, path = pair
    sd = load_file(os.path.join(path, "model.safetensors"))
    bad = dict(sd, **{"model.norm.weight": torch.ones(7)})
    with pytest.raises(ValueError, match=r"bad_shape.*model\.safetensors.*model\.norm\.weight.*\(7,\)"):
        VideoLM.from_pretrained(_copy(path, str(tmp_path / "bad_shape"), bad))
    gone = {k: v for k, v in sd.items() if k != "visual.merger.mlp.0.bias"}
    with pytest.raises(KeyError, match=r"missing.*visual\.merger\.mlp\.0\.bias"):
        VideoLM.from_pretrained(_copy(path, str(tmp_path / "missing"), gone))
    extra = dict(sd, **{"model.layers.9.mlp.up_proj.weight": torch.ones(2)})
    with pytest.raises(ValueError, match=r"extra.*model\.safetensors.*unexpected tensor model\.layers\.9"):
        VideoLM.from_pretrained(_copy(path, str(tmp_path / "extra"), extra))
    cfg = json.load(open(os.path.join(path, "config.json")))
    with pytest.raises(ValueError, match=r"unknown_type.*config\.json.*'llava'"):
        VideoLM.from_pretrained(_copy(path, str(tmp_path / "unknown_type"), config=dict(cfg, model_type="llava")))
    # sharded checkpoint written by transformers, then one shard deleted
    shard_dir = tmp_path / "sharded"
    ref.save_pretrained(str(shard_dir), max_shard_size="100KB")
    index = json.load(open(shard_dir / "model.safetensors.index.json"))["weight_map"]
    assert len(set(index.values())) > 1
    again = VideoLM.from_pretrained(str(shard_dir))
    assert torch.equal(again.model.norm.weight, sd["model.norm.weight"])
    name, shard = next(iter(index.items()))
    os.remove(shard_dir / shard)
    with pytest.raises(FileNotFoundError, match=rf"{shard}.*tensor {name}"):
        VideoLM.from_pretrained(str(shard_dir))


def test_bf16_forward(pair):
    _, ours, path = pair
    low = VideoLM.from_pretrained(path, dtype=torch.bfloat16)
    assert low.lm_head.weight.dtype == torch.bfloat16
    ids, pix, grid = video_prompt([(2, 6, 4)])
    with torch.no_grad():
        b = low(torch.tensor([ids]), pixel_values_videos=pix, video_grid_thw=grid).float()
        a = ours(torch.tensor([ids]), pixel_values_videos=pix, video_grid_thw=grid)
    assert torch.isfinite(b).all()
    pa, pb = a.softmax(-1), b.softmax(-1)
    assert (pa - pb).abs().sum(-1).max() < 0.1  # total variation of next-token distributions
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.8


def test_from_config_and_cache_shapes():
    model = VideoLM.from_config(hf_model("qwen2_vl").config.to_dict())
    assert model.model_type == "qwen2_vl" and (model.patch_size, model.temporal_patch_size) == (14, 2)
    assert model.model.layers[0].self_attn.q_proj.bias.abs().sum() == 0
    cache = model.new_cache(2, 11)
    rep = cache.repeat_interleave(3)
    assert rep.k[0].shape == (6, 2, 11, 16) and rep.max_len == 11
    with pytest.raises(ValueError, match="unknown model_type"):
        VideoLM.from_config({"model_type": "llama"})


def test_from_config_allocates_in_the_asked_dtype():
    # a bf16 model is built in bf16, with no fp32 copy on the way (bench/rollout.py --shape 7b builds 8B params on
    # one GPU); the default dtype is restored and tied embeddings stay tied
    from torch.utils._python_dispatch import TorchDispatchMode

    class Dtypes(TorchDispatchMode):
        seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor) and out.numel() > 1:
                self.seen.add(out.dtype)
            return out

    cfg = hf_model("qwen2_5_vl", tied=True).config.to_dict()
    with Dtypes() as mode:
        b = VideoLM.from_config(cfg, dtype=torch.bfloat16)
    assert mode.seen == {torch.bfloat16} and {p.dtype for p in b.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    assert b.tied and b.lm_head.weight is b.model.embed_tokens.weight


def test_released_flat_config_layout(pair, tmp_path):
    """The released 7B config.json keeps decoder keys at the top level, `rope_scaling: {type: mrope}` and
    `in_chans`; it must build the same model as transformers 5's nested text_config."""
    _, ours, path = pair
    cfg = json.load(open(os.path.join(path, "config.json")))
    text = cfg.pop("text_config")
    rope = text.pop("rope_parameters")
    text.pop("model_type")
    flat = dict(cfg, **text, rope_theta=rope["rope_theta"],
                rope_scaling={"type": "mrope", "mrope_section": rope["mrope_section"]})
    flat["vision_config"] = dict(flat["vision_config"], in_chans=flat["vision_config"].pop("in_channels"))
    again = VideoLM.from_pretrained(_copy(path, str(tmp_path / "flat"), config=flat))
    ids, pix, grid = video_prompt([(2, 6, 4)])
    with torch.no_grad():
        a = ours(torch.tensor([ids]), pixel_values_videos=pix, video_grid_thw=grid)
        b = again(torch.tensor([ids]), pixel_values_videos=pix, video_grid_thw=grid)
    assert torch.equal(a, b)


def test_gradient_checkpointing_same_loss_and_gradients(pair):
    """--grad-checkpoint recomputes the decoder layers in the backward: same loss and gradients, fewer saved tensors."""
    _, ours, _ = pair
    ids, pix, grid = video_prompt([(2, 6, 4)])
    ids = torch.tensor([ids])
    out = []
    for remat in (False, True):
        ours.train()
        ours.gradient_checkpointing = remat
        ours.zero_grad()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            loss = ours(ids, pixel_values_videos=pix, video_grid_thw=grid).logsumexp(-1).mean()
        loss.backward()
        out.append((loss.item(), {n: p.grad.clone() for n, p in ours.named_parameters()}, sum(saved)))
    ours.gradient_checkpointing = False
    ours.eval()
    (la, ga, sa), (lb, gb, sb) = out
    assert la == pytest.approx(lb, abs=1e-6)
    for n in ga:
        assert torch.allclose(ga[n], gb[n], atol=1e-6), n
    assert sb < sa  # the layers' activations were not kept
