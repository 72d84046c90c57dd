"""Qwen3-VL (model_type qwen3_vl) against transformers' Qwen3VLForConditionalGeneration and Qwen3-VL processor, on
tiny random checkpoints saved by transformers; then the three scripts on a tiny Qwen3-VL, one process and two."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from st_r1 import chat
from st_r1.generate import generate
from st_r1.model import VideoLM, mrope_axes
from tests.test_model import IMG, TOKENS, VEND, VID, VSTART, left_pad, type_ids

PATCH = 3 * 2 * 16 * 16
# head_dim 24 is not hidden / heads (16): Qwen3 states it; mrope_section sums to head_dim / 2
TEXT = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6, pad_token_id=0, bos_token_id=1, eos_token_id=2,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 4, 4],
                             "mrope_interleaved": True})
# (tied, deepstack_visual_indexes): never the default (8, 16, 24); [2, 0] also checks that merger k feeds layer k
CASES = {"untied-deepstack20": (False, [2, 0]), "tied-deepstack1": (True, [1])}


def hf_model(tied=False, deepstack=(2, 0)):
    import transformers as tf
    torch.manual_seed(0)
    # a 4x4 table of learned positions: frames of 6x4 and 4x4 patches resample it up and down
    cfg = tf.Qwen3VLConfig(text_config=TEXT, vision_config=dict(
        depth=3, hidden_size=32, intermediate_size=48, num_heads=2, out_hidden_size=64, num_position_embeddings=16,
        deepstack_visual_indexes=list(deepstack)), tie_word_embeddings=tied, **TOKENS)
    model = tf.Qwen3VLForConditionalGeneration(cfg)
    with torch.no_grad():  # every weight, bias and norm random so that no term can hide
        for name, p in model.named_parameters():
            is_norm = p.ndim == 1 and "norm" in name
            p.copy_(torch.randn_like(p) * (0.2 if p.ndim == 1 else 0.08) + float(is_norm))
        model.model.visual.pos_embed.weight.normal_(0, 0.5)
        if not tied:  # scales at which greedy decoding does not just repeat one token
            model.model.language_model.embed_tokens.weight.normal_(0, 1.0)
            model.lm_head.weight.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module", params=list(CASES))
def pair(request, tmp_path_factory):
    ref = hf_model(*CASES[request.param])
    path = str(tmp_path_factory.mktemp(request.param))
    ref.save_pretrained(path)
    return ref, VideoLM.from_pretrained(path), path


def video_prompt(grids, pre=(5, 6, 7), post=(8, 9), seed=0):
    """Token ids as Qwen3-VL's processor lays a video out: per temporal patch, a timestamp (here the one-token
    stand-in 20 + i) then <vision_start><video_pad>*(h*w/4)<vision_end>; and random patches."""
    g = torch.Generator().manual_seed(seed)
    ids, pix = list(pre), []
    for t, h, w in grids:
        for i in range(t):
            ids += [20 + i, VSTART] + [VID] * (h * w // 4) + [VEND]
        ids += [10 + len(pix)]
        pix.append(torch.randn(t * h * w, PATCH, generator=g))
    return ids + list(post), torch.cat(pix), torch.tensor(grids)


def both(ref, ours, ids, mask=None, **vision):
    with torch.no_grad():
        a = ref(input_ids=ids, attention_mask=mask, mm_token_type_ids=type_ids(ids), **vision).logits
        b = ours(ids, attention_mask=mask, **vision)
    return a, b


def mixed_batch():
    """Left-padded: row 0 holds two videos and an image, row 1 one video."""
    r1, p1, g1 = video_prompt([(2, 6, 4), (3, 4, 4)], pre=(5, 6, 7, 8, 9, 10, 11), seed=4)
    r1 = r1[:3] + [VSTART] + [IMG] * 6 + [VEND] + r1[3:]
    r2, p2, g2 = video_prompt([(1, 4, 4)], pre=(5,), post=(6,), seed=5)
    ids, mask = left_pad([r1, r2])
    img = torch.randn(24, PATCH, generator=torch.Generator().manual_seed(3))
    return ids, mask, dict(pixel_values_videos=torch.cat([p1, p2]), video_grid_thw=torch.cat([g1, g2]),
                           pixel_values=img, image_grid_thw=torch.tensor([[1, 4, 6]]))


def test_text_only(pair):
    ref, ours, _ = pair
    ids = torch.randint(30, 280, (2, 17), generator=torch.Generator().manual_seed(1))
    a, b = both(ref, ours, ids)
    assert (a - b).abs().max() < 1e-4


def test_left_padded_batch_two_videos_and_an_image(pair):
    ref, ours, _ = pair
    ids, mask, vision = mixed_batch()
    a, b = both(ref, ours, ids, mask, **vision)
    real = mask.bool()
    assert a.abs().max() > 1 and (a[real] - b[real]).abs().max() < 1e-4
    # each row alone gives the same logits as in the padded batch
    r2 = ids[1, real[1]][None]
    alone = ours(r2, pixel_values_videos=vision["pixel_values_videos"][-16:], video_grid_thw=torch.tensor([[1, 4, 4]]))
    assert (alone[0] - b[1, real[1]]).abs().max() < 1e-4


def test_greedy_32_tokens_with_cache_equal_transformers(pair):
    ref, ours, _ = pair
    ids, mask, vision = mixed_batch()
    n = 32
    out = generate(ours, ids, mask, max_new_tokens=n, eos_token_ids=[299], pad_token_id=0, **vision)
    with torch.no_grad():
        want = ref.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=type_ids(ids), max_new_tokens=n,
                            min_new_tokens=n, do_sample=False, eos_token_id=299, pad_token_id=0,
                            suppress_tokens=[IMG, VID], **vision)[:, ids.shape[1]:]
    assert out.tokens.shape == (2, n) and torch.equal(out.tokens, want)
    assert len(set(out.tokens.flatten().tolist())) > 4  # a real sequence, not one token repeated


def test_rope_index_by_hand():
    """Each temporal patch is its own (1, h, w) item: time = its start, text after it at start + max(h, w) / 2."""
    model = VideoLM.from_config(hf_model().config.to_dict())
    ids = torch.tensor([[5, 20, VSTART] + [VID] * 2 + [VEND, 21, VSTART] + [VID] * 2 + [VEND, 6]])
    pos, nxt = model.rope_index(ids, torch.ones_like(ids, dtype=torch.bool), video_grid_thw=torch.tensor([[2, 2, 4]]))
    assert pos[0, 0].tolist() == [0, 1, 2, 3, 3, 5, 6, 7, 8, 8, 10, 11]
    assert pos[1, 0].tolist() == [0, 1, 2, 3, 3, 5, 6, 7, 8, 8, 10, 11]
    assert pos[2, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert nxt.tolist() == [12]


def test_interleaved_mrope_axes():
    # height every third frequency from 1, width from 2, each 4 times; time the rest
    assert mrope_axes([4, 4, 4], True).tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2]
    assert mrope_axes([24, 20, 20], True).bincount().tolist() == [24, 20, 20]
    assert mrope_axes([2, 3, 3], False).tolist() == [0, 0, 1, 1, 1, 2, 2, 2]


def test_save_roundtrip_to_transformers_and_both_layouts(pair, tmp_path):
    ref, ours, path = pair
    ours.save_pretrained(str(tmp_path / "ours"))
    sd = load_file(str(tmp_path / "ours" / "model.safetensors"))
    assert sorted(sd) == sorted(load_file(os.path.join(path, "model.safetensors")))  # transformers' own names
    back = type(ref).from_pretrained(str(tmp_path / "ours")).eval()
    ids, mask, vision = mixed_batch()
    a, b = both(back, ours, ids, mask, **vision)
    assert (a - b)[mask.bool()].abs().max() < 1e-4
    # the Qwen2-VL style names (model.layers.*, visual.*) load too
    flat = {("model." + k[len("model.language_model."):] if k.startswith("model.language_model.") else
             k[len("model."):] if k.startswith("model.visual.") else k): v for k, v in sd.items()}
    os.makedirs(tmp_path / "flat")
    save_file(flat, str(tmp_path / "flat" / "model.safetensors"))
    (tmp_path / "flat" / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    again = VideoLM.from_pretrained(str(tmp_path / "flat"))
    assert all(torch.equal(x, y) for x, y in zip(again.state_dict().values(), ours.state_dict().values()))
    assert again.tied == ours.tied == bool(ref.config.tie_word_embeddings)
