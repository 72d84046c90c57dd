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


# ----------------------------------------------------------------------------- the processor

@pytest.fixture(scope="module")
def hf_processing():
    """transformers' Qwen3VLVideoProcessor and Qwen3VLProcessor, run without torchvision.

    PyPI's torchvision wheels are CUDA builds that do not load next to the CPU torch used here, and transformers only
    offers its Qwen3-VL video processor on torchvision. So the module is loaded from its file and the four
    torchvision functions it calls are stood in for as torchvision 0.28 computes them on a CPU tensor
    (transforms/v2/functional): resize_image of a uint8 image with BICUBIC passes the uint8 tensor itself to torch's
    interpolate (its native uint8 path, `_do_native_uint8_resize_on_cpu`), normalize_image is (x - mean) / std in
    float32, grayscale_to_rgb returns a 3-channel image as it is. Everything else (resize rule, rescale, patch
    order, grid, timestamps, prompt expansion) is transformers' own code."""
    import importlib.util
    import sys
    import types

    import torch.nn.functional as F
    import transformers
    import transformers.image_processing_backends as backends
    import transformers.video_processing_utils as vpu
    from transformers.image_utils import PILImageResampling
    from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

    def resize(image, size, interpolation, antialias=True):
        flat = image.reshape(-1, *image.shape[-3:])
        out = F.interpolate(flat, size=list(size), mode=interpolation, align_corners=False, antialias=antialias)
        return out.reshape(*image.shape[:-2], *out.shape[-2:])

    def normalize(image, mean, std, inplace=False):
        return (image - torch.as_tensor(mean).view(-1, 1, 1)) / torch.as_tensor(std).view(-1, 1, 1)

    tvf = types.SimpleNamespace(resize=resize, normalize=normalize, grayscale_to_rgb=lambda x: x,
                                InterpolationMode=types.SimpleNamespace(BICUBIC="bicubic", BILINEAR="bilinear",
                                                                        LANCZOS="lanczos"))
    mp = pytest.MonkeyPatch()
    mp.setattr(vpu, "tvF", tvf, raising=False)
    mp.setattr(backends, "tvF", tvf, raising=False)
    mp.setattr(backends, "pil_torch_interpolation_mapping", {PILImageResampling.BICUBIC: "bicubic"})
    # the processor checks its parts against the auto classes, which without torchvision are placeholders
    mp.setattr(Qwen3VLProcessor, "check_argument_for_proper_class", lambda self, name, arg: type(arg))
    name = "transformers.models.qwen3_vl._video_processing_qwen3_vl_cpu"
    path = os.path.join(os.path.dirname(transformers.__file__), "models", "qwen3_vl", "video_processing_qwen3_vl.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    mp.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)
    mp.setattr(module, "tvF", tvf, raising=False)
    yield module, Qwen3VLProcessor
    mp.undo()


def hf_video(module, frames, min_pixels, max_pixels):
    """The processor's pixels for these frames, its budget (over all frames) set to our per-frame one x frames."""
    n = len(frames)
    vp = module.Qwen3VLVideoProcessor(size={"shortest_edge": min_pixels * n, "longest_edge": max_pixels * n},
                                      do_sample_frames=False, cap_pixels_per_frame=False)
    out = vp(videos=[np.asarray(frames)], return_tensors="pt")
    return vp, out["pixel_values_videos"], out["video_grid_thw"]


def test_smart_resize_video_matches_transformers(hf_processing):
    from st_r1.video import smart_resize_video
    module, _ = hf_processing
    rng = np.random.default_rng(0)
    for _ in range(300):
        t = int(rng.integers(2, 20))
        h, w = rng.integers(8, 2000, 2).tolist()
        lo, hi = sorted(rng.integers(32 * 32, 2000 * 32 * 32, 2).tolist())
        assert smart_resize_video(t, h, w, 32, lo * t, hi * t) == module.smart_resize(t, h, w, 2, 32, lo * t, hi * t)


@pytest.mark.parametrize("t,h,w,lo,hi", [
    (4, 360, 640, 32 * 32, 64 * 32 * 32),   # downscale (the common video case)
    (5, 100, 150, 32 * 32, 80 * 32 * 32),   # odd frame count: padded after the resize, as the processor does
    (2, 20, 150, 32 * 32, 40 * 32 * 32),    # a side under 32 px: scaled up to it first
])
def test_frames_match_the_qwen3_vl_video_processor(hf_processing, t, h, w, lo, hi):
    from st_r1.video import preprocess
    from tests.test_video import natural_image
    module, _ = hf_processing
    frames = np.stack([natural_image(h, w, seed=i) for i in range(t)])
    _, ref, ref_grid = hf_video(module, frames, lo, hi)
    pv, grid = preprocess(frames, lo, hi, family="qwen3_vl")
    assert grid.tolist() == ref_grid.tolist() and pv.shape == ref.shape == (int(grid.prod()), PATCH)
    assert (pv - ref).abs().max() < 1e-5


@pytest.fixture(scope="module")
def mp4_prompt(hf_processing, tiny_tok, tmp_path_factory):
    """A real mp4 at 8 fps through transformers' processor (the same frames with their indices and the stream's
    rate) and through ours: (processor output, our prompt ids, our clip)."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.video_utils import VideoMetadata

    from st_r1 import video as V
    from tests.test_video import write_video
    module, Qwen3VLProcessor = hf_processing
    path = write_video(tmp_path_factory.mktemp("mp4") / "v.mp4", 40, fps=8, h=100, w=150)
    lo, hi = 32 * 32, 24 * 32 * 32
    clip = V.load_video(path, 6, lo, hi, family="qwen3_vl")
    frames = V.sample_frames(path, 6)
    indices = V.uniform_indices(40, 6)
    assert indices == [0, 8, 16, 23, 31, 39]
    # (0 + 1) / 2, (2 + 2.875) / 2, (3.875 + 4.875) / 2 seconds
    assert clip.timestamps == [0.5, 2.4375, 4.375]
    vp, ref, ref_grid = hf_video(module, frames, lo, hi)
    assert torch.equal(clip.grid, ref_grid) and (clip.pixel_values - ref).abs().max() < 1e-5
    proc = Qwen3VLProcessor(image_processor=Qwen2VLImageProcessorPil(patch_size=16), tokenizer=tiny_tok,
                            video_processor=vp)
    question = "Which way do you turn?"
    text = chat.prompt_text(question, 1)  # the template's <|vision_start|><|video_pad|><|vision_end|>
    got = proc(text=[text], videos=[frames], return_tensors="pt",
               video_metadata=[VideoMetadata(total_num_frames=40, fps=8.0, frames_indices=indices)])
    return got, chat.prompt_ids(tiny_tok, question, clip.grid, 2, timestamps=clip.timestamps), clip


def test_video_prompt_with_timestamps_matches_the_qwen3_vl_processor(mp4_prompt, tiny_tok):
    """Qwen's released layout (transformers 4.57 and >= 5.25): the timestamped blocks replace the template's
    outer vision_start/video_pad/vision_end; transformers 5.0-5.24 kept that outer pair (two tokens more)."""
    got, ours, clip = mp4_prompt
    assert got["input_ids"][0].tolist() == ours
    assert torch.equal(got["video_grid_thw"], clip.grid)
    text = tiny_tok.decode(ours)
    assert "<|im_start|>user\n<0.5 seconds><|vision_start|>" in text and "<4.4 seconds>" in text
    assert text.count("<|vision_start|>") == text.count("<|vision_end|>") == 3  # one pair per temporal patch
    assert "<|vision_end|>Which way" in text
    assert text.count("<|video_pad|>") == int(clip.grid.prod()) // 4


def test_logits_on_the_processors_mp4_prompt_equal_transformers(mp4_prompt, tiny_tok, tmp_path):
    """Our logits on that prompt (positions of each timestamped block, DeepStack added at the video tokens) equal
    transformers' Qwen3-VL on the processor's own ids, pixels and token types."""
    import transformers as tf

    from st_r1.tiny import write_tiny_model
    got, ours_ids, clip = mp4_prompt
    folder = write_tiny_model(str(tmp_path / "m"), weights=False, vocab_size=800, family="qwen3_vl",
                              hidden=64, vision_hidden=32, vision_depth=3)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    cfg["vision_config"]["deepstack_visual_indexes"] = [2, 0]
    cfg["tie_word_embeddings"] = cfg["text_config"]["tie_word_embeddings"] = False
    torch.manual_seed(0)
    ref = tf.Qwen3VLForConditionalGeneration(tf.Qwen3VLConfig(**cfg))
    with torch.no_grad():  # every weight random, as in hf_model
        for name, p in ref.named_parameters():
            p.copy_(torch.randn_like(p) * (0.2 if p.ndim == 1 else 0.08) + float(p.ndim == 1 and "norm" in name))
        ref.model.visual.pos_embed.weight.normal_(0, 0.5)
        ref.model.language_model.embed_tokens.weight.normal_(0, 1.0)
    ref.eval().save_pretrained(str(tmp_path / "ref"))
    ours = VideoLM.from_pretrained(str(tmp_path / "ref"))
    ids = torch.tensor([ours_ids])
    assert torch.equal(ids, got["input_ids"])
    with torch.no_grad():
        a = ref(**got).logits
        b = ours(ids, pixel_values_videos=clip.pixel_values, video_grid_thw=clip.grid)
    assert a.abs().max() > 1 and (a - b).abs().max() < 1e-4


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory):
    from transformers import AutoTokenizer

    from st_r1.tiny import write_tiny_model
    path = write_tiny_model(str(tmp_path_factory.mktemp("tok")), weights=False, vocab_size=800, family="qwen3_vl")
    return AutoTokenizer.from_pretrained(path)


# ----------------------------------------------------------------------------- the scripts on a tiny Qwen3-VL

@pytest.fixture(scope="module")
def tiny3(tmp_path_factory):
    from st_r1.tiny import write_tiny_model
    from st_r1.world import make_bench
    root = tmp_path_factory.mktemp("tiny3")
    make_bench(str(root / "bench"), seed=0, n_videos=2, n_test=1, size=56, frames=32, workers=1, progress=False)
    # one vision block feeding DeepStack (index 0) and the main merger; 64x64 frames: 2x2 tokens per temporal patch
    write_tiny_model(str(root / "model"), hidden=64, layers=2, vision_hidden=32, vision_depth=1, vocab_size=800,
                     family="qwen3_vl")
    return root


def flags(tiny3, out):
    return ["--model", tiny3 / "model", "--train-file", tiny3 / "bench" / "train.jsonl", "--eval-file", "",
            "--out", out, "--min-pixels", 32 * 32, "--max-pixels", 64 * 64, "--eval-every", 0]


def test_prompt_encoder_writes_timestamped_blocks(tiny3):
    from st_r1 import data
    tok = data.load_tokenizer(str(tiny3 / "model"))
    model = VideoLM.from_pretrained(str(tiny3 / "model"))
    assert model.model_type == "qwen3_vl" and model.patch_size == 16 and model.visual.deepstack_visual_indexes == [0]
    enc = data.PromptEncoder(tok, str(tiny3 / "bench"), 8, 32 * 32, 64 * 64, family="qwen3_vl")
    row = data.load_rows(str(tiny3 / "bench" / "train.jsonl"))[0]
    ex = enc.encode(row)
    text = tok.decode(ex["input_ids"])
    t = int(ex["video_grid_thw"][0, 0])
    assert ex["pixel_values_videos"].shape[1] == PATCH and ex["video_grid_thw"].tolist() == [[4, 4, 4]]
    assert text.count(" seconds><|vision_start|>") == t and text.count("<|video_pad|>") == 4 * t
    batch = data.collate_prompts([ex, enc.encode_sft(row)], tok.pad_token_id)
    with torch.no_grad():
        assert torch.isfinite(model(**{k: v for k, v in batch.items() if k != "labels"})).all()


def test_sft_lora_grpo_and_evaluate_scripts_on_tiny_qwen3vl(tiny3, tmp_path):
    """SFT (with LoRA, merged on save), GRPO from its model, evaluate: all read the family from config.json, and
    every saved model is a Qwen3-VL folder that transformers loads."""
    import transformers as tf

    from tests.test_train import final, log, run
    sft = ["--steps", 3, "--batch-size", 4, "--micro-batch", 2, "--lr", 3e-3, "--warmup", 1, "--lora-r", 4]
    p = run("train_sft.py", flags(tiny3, tmp_path / "sft") + sft)
    assert p.returncode == 0, p.stderr[-3000:]
    assert all(np.isfinite(r["loss"]) for r in log(tmp_path / "sft"))
    model = tmp_path / "sft" / open(tmp_path / "sft" / "latest").read().strip() / "model"
    assert any(k.startswith("model.language_model.") for k in final(tmp_path / "sft"))
    tf.Qwen3VLForConditionalGeneration.from_pretrained(str(model))  # loads, no tensor missing or unexpected
    grpo = ["--steps", 2, "--prompts-per-step", 2, "--group-size", 4, "--max-new-tokens", 8, "--micro-batch", 4,
            "--lr", 1e-2, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]
    p = run("train_grpo.py", flags(tiny3, tmp_path / "grpo")[2:] + ["--model", model] + grpo)
    assert p.returncode == 0, p.stderr[-3000:]
    assert all(r["grad_norm"] > 0 for r in log(tmp_path / "grpo"))
    grpo_model = tmp_path / "grpo" / open(tmp_path / "grpo" / "latest").read().strip() / "model"
    p = run("evaluate.py", ["--bench", tiny3 / "bench" / "test.jsonl", "--model", grpo_model, "--limit", 3,
                            "--max-new-tokens", 6, "--min-pixels", 32 * 32, "--max-pixels", 64 * 64,
                            "--out", tmp_path / "s.json"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "s.json").read_text())["missing"] == 0


def test_sft_fsdp_and_grpo_two_ranks_equal_one_process_qwen3vl(tiny3, tmp_path):
    """2 gloo processes == 1: SFT under FSDP2 (decoder and vision blocks sharded, DeepStack mergers in the root
    unit), GRPO under DDP (KV-cache rollout, shared-prefix update)."""
    from tests.test_train import assert_same, run
    sft = ["--steps", 2, "--batch-size", 4, "--micro-batch", 2, "--lr", 1e-3, "--warmup", 1]
    for n, extra in ((1, []), (2, ["--parallel", "fsdp"])):
        p = run("train_sft.py", flags(tiny3, tmp_path / f"sft{n}") + sft + extra, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "sft1", tmp_path / "sft2", "loss", 1e-4)
    # lr 1e-3: Adam turns float noise in near-zero gradients into updates of ~lr; at 1e-2 that passes 1e-4
    grpo = ["--steps", 2, "--prompts-per-step", 2, "--group-size", 4, "--max-new-tokens", 8, "--micro-batch", 4,
            "--lr", 1e-3, "--beta", 0.04, "--reward-weights", "brevity=1,format=1"]
    for n in (1, 2):
        p = run("train_grpo.py", flags(tiny3, tmp_path / f"grpo{n}") + grpo, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    assert_same(tmp_path / "grpo1", tmp_path / "grpo2", "reward", 1e-4)
