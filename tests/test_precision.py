"""Mixed precision (issue 19): fp32 / bf16-mixed / bf16 on the tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL, autocast safety, FSDP2's
MixedPrecisionPolicy on 2 ranks, bench/memory.py's inventory, bench/gpu_check.sh on a CPU."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from st_r1 import checkpoint, grpo, lora, precision
from st_r1.cli import UserError
from st_r1.generate import generate
from st_r1.model import VideoLM
from st_r1.training import sft_loss
from test_train import common, final, log, run, tiny  # noqa: F401  (tiny: the module's fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
import memory  # noqa: E402

TYPES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]
VID, VSTART, VEND = 491, 492, 493


def config(model_type, layers=2):
    """A tiny config of the released layout (bench/memory.py's, shrunk): 2 layers, vision 2 blocks of 32."""
    if model_type == "qwen3_vl":  # st_r1.tiny's, nested as the releases; DeepStack from vision block 0
        from st_r1.tiny import mrope_section, qwen3_config
        ids = {"<|image_pad|>": 490, "<|video_pad|>": VID, "<|vision_start|>": VSTART, "<|vision_end|>": VEND,
               "<|endoftext|>": 0, "<|im_end|>": 2}
        c = qwen3_config(ids, 500, 64, layers, 4, 2, 32, 2, 2)
        # heads of 24, not 64 / 4: as Qwen3-VL-4B's 128, not 2560 / 32 (q and k are not the model's width)
        c["text_config"].update(head_dim=24)
        c["text_config"]["rope_parameters"]["mrope_section"] = mrope_section(24, model_type)
        return c
    c = json.loads(json.dumps(memory.MODELS["qwen2.5-vl-7b" if model_type == "qwen2_5_vl" else "qwen2-vl-7b"]))
    c.update(vocab_size=500, hidden_size=64, intermediate_size=160, num_hidden_layers=layers, num_attention_heads=4,
             num_key_value_heads=2, image_token_id=490, video_token_id=VID, vision_start_token_id=VSTART,
             vision_end_token_id=VEND)
    c["rope_scaling"]["mrope_section"] = [2, 3, 3]
    c["vision_config"].update(depth=2, num_heads=2)
    if model_type == "qwen2_5_vl":  # one windowed and one full-attention block
        c["vision_config"].update(hidden_size=32, intermediate_size=80, out_hidden_size=64, fullatt_block_indexes=[1])
    else:
        c["vision_config"].update(embed_dim=32, hidden_size=64, mlp_ratio=3)
    return c


def make(model_type, name, freeze_vision=False, lora_r=0):
    """The same fp32 initial weights for every policy, then stored and frozen as the scripts do."""
    torch.manual_seed(0)
    pol = precision.policy(name)
    model = VideoLM.from_config(config(model_type)).to(pol.param_dtype)
    if freeze_vision:
        model.visual.requires_grad_(False)
    if lora_r:
        lora.apply_lora(model, r=lora_r)
    return precision.apply(model, pol), pol


def batch(labels=True, patch=3 * 2 * 14 * 14):
    """Two rows, each a (2, 4, 4)-patch video (8 tokens) and text; the second left-padded by 2. patch: the size of a
    flattened patch (3 * 2 * 16 * 16 for Qwen3-VL, whose rows are 2 frames of 4 tokens without timestamps)."""
    g = torch.Generator().manual_seed(0)
    rows = [[VSTART] + [VID] * 8 + [VEND] + torch.randint(10, 480, (n,), generator=g).tolist() for n in (12, 10)]
    ids = torch.tensor([rows[0], [0, 0] + rows[1]])
    b = dict(input_ids=ids, attention_mask=(ids != 0).long(), video_grid_thw=torch.tensor([[2, 4, 4]] * 2),
             pixel_values_videos=torch.randn(64, patch, generator=g))
    if labels:
        b["labels"] = ids.masked_fill(ids == 0, -100)
    return b


def patch_of(model):
    return 3 * model.temporal_patch_size * model.patch_size ** 2


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


@pytest.mark.parametrize("model_type", TYPES)
def test_sft_loss_takes_logits_at_the_answer_only(model_type):
    """sft_loss asks the model for the logits of the labelled places only (logits_at): the same loss and gradients
    as the cross-entropy over every place's logits with the unlabelled ones ignored, and none of the video's."""
    model, _ = make(model_type, "fp32")
    b = batch(patch=patch_of(model))
    b["labels"][:, :14] = -100  # the video and the first text tokens are prompt: not learned
    n = int((b["labels"][:, 1:] != -100).sum())
    loss = sft_loss(model.train(), dict(b), n)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    full = model(**{k: v for k, v in b.items() if k != "labels"})
    assert full.shape[:2] == b["input_ids"].shape
    ref = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                                            ignore_index=-100, reduction="sum") / n
    ref.backward()
    assert torch.allclose(loss, ref, rtol=1e-5, atol=1e-6)
    for g, p in zip(grads, model.parameters()):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-7)
    b2 = dict(b, labels=b["labels"].clone())
    b2["labels"][0, 20] = 7  # a label the model does not predict there moves the loss: the targets line up
    assert not torch.allclose(sft_loss(model, b2, n), loss)
    b3 = dict(b, labels=torch.full_like(b["labels"], -100))  # a zero-weight pass (a rank without rows): 0, finite
    assert sft_loss(model, b3, 1).item() == 0.0


# ----------------------------------------------------------------------------------------------- autocast safety

@pytest.mark.parametrize("model_type", TYPES)
def test_video_forward_under_autocast(model_type):
    """The issue's crash: under torch.autocast the vision attention wrote bf16 outputs into an fp32 buffer
    ('Index put requires the source and destination dtypes match'). Now it runs, and stays close to fp32."""
    model, _ = make(model_type, "fp32")
    b = batch(labels=False, patch=patch_of(model))
    with torch.no_grad():
        ref = model.eval()(**b)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**b)
    assert low.dtype == torch.bfloat16 and rel_err(low, ref) < 0.03


class WeightCasts(TorchDispatchMode):
    """Counts the dtype casts made of the model's parameters (autocast's bf16 copies)."""

    def __init__(self, model):
        super().__init__()
        self.ptrs, self.n = {p.untyped_storage().data_ptr() for p in model.parameters()}, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].untyped_storage().data_ptr() in self.ptrs:
            self.n += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_type", TYPES)
def test_bf16_mixed_casts_each_weight_once_per_call(model_type):
    """generate() and completion_logprobs() run in one autocast region: each fp32 matrix is cast to bf16 once per
    call (not once per decoded token, nor once per pass), and the KV cache is bf16."""
    model, _ = make(model_type, "bf16-mixed")
    b = batch(labels=False, patch=patch_of(model))
    mats = len(list(model.parameters()))  # each cast at most once
    counts = []
    for new in (2, 8):
        with WeightCasts(model) as casts:
            gen = generate(model.eval(), **b, max_new_tokens=new, eos_token_ids=[10**6], pad_token_id=0,
                           num_samples=2, temperature=1.0, generator=torch.Generator().manual_seed(0))
        counts.append(casts.n)
    assert counts[0] == counts[1] <= mats, counts  # more tokens, no more casts
    assert gen.logprobs.dtype == torch.float32
    with WeightCasts(model) as casts:
        logp, _ = grpo.completion_logprobs(model, b, gen.tokens, gen.mask, group_size=2)
    assert casts.n <= mats and logp.dtype == torch.float32
    assert model.new_cache(1, 4).k[0].dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------- the three policies

def grpo_step(model, pol, opt):
    """A rollout and one GRPO update against a frozen reference held in the policy's reference dtype."""
    prompts = batch(labels=False, patch=patch_of(model))
    ref = VideoLM.from_config(model.config, dtype=pol.ref_dtype)
    ref.load_state_dict(lora.split_state_dict(model, model.state_dict())[0])  # LoRA adapters merged in
    ref.eval().requires_grad_(False)
    cfg = grpo.GRPOConfig(group_size=2, max_new_tokens=4, micro_batch=4, beta=0.04)
    gen = grpo.rollout(model.eval(), prompts, cfg, [10**6], 0, torch.Generator().manual_seed(1))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    return gen, grpo.update(model, ref, opt, prompts, gen, adv, cfg, grpo.Timer())


@pytest.mark.parametrize("name", precision.POLICIES)
@pytest.mark.parametrize("model_type", TYPES)
def test_forward_sft_step_and_grpo_step(model_type, name):
    model, pol = make(model_type, name)
    b = batch(patch=patch_of(model))
    with torch.no_grad():
        assert model.eval()(**{k: v for k, v in b.items() if k != "labels"}).dtype == pol.compute_dtype
    assert model.new_cache(2, 8).k[0].dtype == pol.compute_dtype  # the KV cache follows the compute dtype
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = sft_loss(model.train(), dict(b), 20)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)  # the loss is fp32 whatever the policy
    loss.backward()
    assert {p.grad.dtype for p in model.parameters()} == {pol.param_dtype}
    opt.step()
    gen, stats = grpo_step(model, pol, opt)
    assert gen.logprobs.dtype == torch.float32 and all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert stats["grad_norm"] > 0
    # master weights and AdamW states: fp32 under fp32 and bf16-mixed, bf16 only under pure bf16
    assert {p.dtype for p in model.parameters()} == {pol.param_dtype}
    assert {t.dtype for st in opt.state.values() for t in st.values() if t.dim()} == {pol.param_dtype}
    assert all(p.grad is None for p in model.parameters())  # freed after the update, before the next rollout


@pytest.mark.parametrize("model_type", TYPES)
def test_bf16_mixed_tracks_fp32(model_type):
    """4 SFT steps from the same weights: bf16-mixed losses within 1% of fp32's; the GRPO log-probs of the same
    completions within 0.05 nats."""
    losses, logps = {}, {}
    patch = 3 * 2 * (16 if model_type == "qwen3_vl" else 14) ** 2
    b = batch(patch=patch)
    for name in ("fp32", "bf16-mixed"):
        model, pol = make(model_type, name)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        losses[name] = []
        for _ in range(4):
            loss = sft_loss(model.train(), dict(b), 20)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[name].append(loss.item())
        if name == "fp32":
            gen = grpo.rollout(model.eval(), batch(False, patch), grpo.GRPOConfig(group_size=2, max_new_tokens=6),
                               [10**6], 0, torch.Generator().manual_seed(0))
        with torch.no_grad():
            logps[name] = grpo.completion_logprobs(model, batch(False, patch), gen.tokens, gen.mask, group_size=2)[0]
    assert losses["fp32"][-1] < losses["fp32"][0]
    assert losses["bf16-mixed"] == pytest.approx(losses["fp32"], rel=1e-2)
    assert (logps["bf16-mixed"] - logps["fp32"]).abs().max() < 0.05


def test_bf16_mixed_keeps_updates_that_pure_bf16_loses():
    """Why fp32 master weights: an AdamW step of lr 1e-6 moves weights of size ~0.02 by 5e-5, below bf16's
    resolution there (2^-8 relative): pure bf16 rounds almost every update away, bf16-mixed keeps them all."""
    b = batch()
    moved = {}
    for name in ("bf16-mixed", "bf16"):
        model, _ = make("qwen2_5_vl", name)
        w = model.model.layers[0].mlp.up_proj.weight
        before = w.detach().clone()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        sft_loss(model.train(), dict(b), 20).backward()
        opt.step()
        moved[name] = (w.detach() != before).float().mean().item()
        assert w.dtype == opt.state[w]["exp_avg"].dtype == (torch.float32 if name == "bf16-mixed" else torch.bfloat16)
    assert moved["bf16-mixed"] > 0.95 and moved["bf16"] < 0.05, moved


def test_frozen_weights_are_stored_in_bf16_under_bf16_mixed():
    """--freeze-vision and LoRA's base need no fp32 master copy: bf16; the adapters train in fp32."""
    model, _ = make("qwen2_5_vl", "bf16-mixed", freeze_vision=True)
    assert {p.dtype for p in model.visual.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    model, pol = make("qwen2_vl", "bf16-mixed", lora_r=4)
    trained = lora.lora_parameters(model)
    assert {p.dtype for p in trained} == {torch.float32}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert {p.dtype for p in model.parameters() if not p.requires_grad} == {torch.bfloat16}
    opt = torch.optim.AdamW(trained, lr=1e-3)
    loss = sft_loss(model.train(), dict(batch()), 20)
    loss.backward()
    opt.step()
    _, stats = grpo_step(model, pol, opt)
    assert torch.isfinite(loss) and stats["grad_norm"] > 0


def test_policy_names_and_defaults():
    assert precision.policy("", "cpu").name == "fp32" and precision.policy("", "cuda").name == "bf16-mixed"
    mixed = precision.policy("bf16-mixed")
    assert mixed.param_dtype == torch.float32 and mixed.compute_dtype == mixed.ref_dtype == torch.bfloat16
    mp = precision.fsdp_policy(mixed)
    assert (mp.param_dtype, mp.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert precision.fsdp_policy(precision.policy("fp32")) is None
    import evaluate
    import train_grpo
    import train_sft
    for check in (lambda: train_sft.validate(train_sft.Config(precision="fp16"), 1),
                  lambda: train_grpo.validate(train_grpo.Config(precision="fp16"), 1),
                  lambda: evaluate.validate(evaluate.Options(precision="fp16"))):
        with pytest.raises(UserError, match="--precision"):
            check()


def test_resume_restores_fp32_master_weights_of_a_bf16_checkpoint(tmp_path):
    """A run that starts from a bf16 checkpoint (config.json: bfloat16) trains fp32 master weights under bf16-mixed;
    its resume must load them as fp32, not rounded to the dtype the config names."""
    model, _ = make("qwen2_5_vl", "bf16-mixed")
    model.config["torch_dtype"] = "bfloat16"
    want = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoint.save_checkpoint(str(tmp_path), 1, model, None)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    checkpoint.load_checkpoint(str(tmp_path), model)
    for k, v in model.state_dict().items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k]), k


# ----------------------------------------------------------------------------------------------- FSDP2, 2 ranks

def test_fsdp_two_ranks_bf16_mixed_equal_one_process(tiny, tmp_path):  # noqa: F811
    """train_sft.py --precision bf16-mixed: FSDP2 on 2 ranks (MixedPrecisionPolicy: bf16 all-gather and compute,
    fp32 reduce-scatter, on gloo) against one process (autocast). The two round differently (FSDP2 hands every
    module bf16 weights, so the residual stream is bf16; autocast keeps it fp32), so they agree to bf16's noise,
    as bf16-mixed and fp32 do: losses within 2e-3, and the weight updates within 10% of their size. Both keep fp32
    master weights, and the FSDP2 run did compute in bf16: its updates differ from fp32's by more than 1%."""
    args = ["--steps", 2, "--batch-size", 4, "--micro-batch", 2, "--lr", 1e-3, "--warmup", 1]
    runs = {"fp32": ("fp32", 1, []), "mixed": ("bf16-mixed", 1, []), "fsdp": ("bf16-mixed", 2, ["--parallel", "fsdp"])}
    for key, (prec, n, extra) in runs.items():
        p = run("train_sft.py", common(tiny, tmp_path / key) + args + ["--precision", prec] + extra, nproc=n)
        assert p.returncode == 0, p.stderr[-3000:]
    start = final_of(tiny / "model")
    upd = {k: torch.cat([(v.float() - start[n].float()).flatten() for n, v in sorted(final(tmp_path / k).items())])
           for k in runs}
    rel = lambda a, b: ((upd[a] - upd[b]).norm() / upd[b].norm()).item()
    assert [r["loss"] for r in log(tmp_path / "fsdp")] == pytest.approx([r["loss"] for r in log(tmp_path / "mixed")],
                                                                        abs=2e-3)
    assert rel("fsdp", "mixed") < 0.1 and rel("mixed", "fp32") < 0.1
    assert rel("fsdp", "fp32") > 0.01
    assert {v.dtype for v in final(tmp_path / "fsdp").values()} == {torch.float32}


def test_scripts_load_in_the_policy_dtypes(tiny, tmp_path):  # noqa: F811
    """train_grpo.py under bf16-mixed: fp32 policy, bf16 reference, and a step runs; evaluate.py's --precision."""
    import evaluate
    import train_grpo
    ref = train_grpo.reference_model(str(tiny / "model"), precision.policy("bf16-mixed"), "cpu")
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in ref.parameters())
    assert {p.dtype for p in train_grpo.reference_model(str(tiny / "model"), precision.policy("fp32"), "cpu")
            .parameters()} == {torch.float32}
    for name, dtype, compute in (("bf16-mixed", torch.float32, torch.bfloat16), ("bf16", torch.bfloat16, None)):
        model, _, _ = evaluate.load_ours(evaluate.Options(model=str(tiny / "model"), precision=name))
        assert {p.dtype for p in model.parameters()} == {dtype} and model.compute_dtype == compute
    args = ["--steps", 1, "--prompts-per-step", 1, "--group-size", 2, "--max-new-tokens", 4, "--micro-batch", 2,
            "--reward-weights", "brevity=1", "--precision", "bf16-mixed"]
    p = run("train_grpo.py", common(tiny, tmp_path / "grpo") + args)
    assert p.returncode == 0, p.stderr[-3000:]
    assert {v.dtype for v in final(tmp_path / "grpo").values()} == {torch.float32}  # the master weights


def final_of(model_dir):
    from safetensors.torch import load_file
    return load_file(os.path.join(model_dir, "model.safetensors"))


# ----------------------------------------------------------------------------------------------- bench/memory.py

def test_memory_configs_have_the_released_sizes():
    """The config dimensions written from the model cards give the published parameter counts."""
    rounded = {"qwen2-vl-2b": 2.21e9, "qwen2-vl-7b": 8.29e9, "qwen2.5-vl-3b": 3.75e9, "qwen2.5-vl-7b": 8.29e9}
    # exact: the Hub API's safetensors total of Qwen/Qwen3-VL-8B-Instruct (revision 0c351dd) as quoted in public
    # reports; the parameters transformers counts in Qwen/Qwen3-VL-4B-Instruct (tied embeddings once), as public run
    # logs record them
    exact = {"qwen3-vl-4b": 4437815808, "qwen3-vl-8b": 8767123696}
    for name, n in {**rounded, **exact}.items():
        got = sum(p.numel() for p in VideoLM.from_config(memory.MODELS[name], device="meta").parameters())
        assert got == pytest.approx(n, rel=5e-3 if name in rounded else 0), name


def saved_bytes(model, b):
    """Bytes autograd keeps in one forward, each storage once, parameters and the batch's own tensors excluded."""
    skip = {t.untyped_storage().data_ptr() for t in list(model.parameters()) + list(b.values())}
    seen = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**b)
    return sum(seen.values())


@pytest.mark.parametrize("setup", [dict(), dict(freeze_vision=True), dict(grad_checkpoint=True), dict(lora_r=4)],
                         ids=["full", "freeze_vision", "grad_checkpoint", "lora"])
@pytest.mark.parametrize("name", precision.POLICIES)
@pytest.mark.parametrize("model_type", TYPES)
def test_memory_activation_inventory_matches_autograd(model_type, name, setup):
    """memory.py's per-token / per-patch inventory equals what autograd really keeps in a forward (within 1.5%: the
    CPU's LayerNorm keeps bf16 statistics where CUDA's keep fp32; LoRA's first layer keeps no bf16 copy of A)."""
    s = memory.Setup(precision=name, parallel="none", gpus=1, **setup)
    model, _ = make(model_type, name, freeze_vision=s.freeze_vision, lora_r=s.lora_r)
    model.train().gradient_checkpointing = s.grad_checkpoint
    b = batch(labels=False, patch=patch_of(model))
    b["attention_mask"] = torch.ones_like(b["input_ids"])  # no padding: the causal path, no mask tensor
    got = saved_bytes(model, b)
    a = memory.activations(model.config, s, b["input_ids"].numel(), 64, 0)
    kept = memory.bf16_copies(model.config, s)[1]
    assert a["decoder"] + a["vision"] + kept == pytest.approx(got, rel=1.5e-2)


def test_memory_estimates_order_sensibly():
    cfg = memory.MODELS["qwen2.5-vl-7b"]
    total = lambda **kw: memory.estimate(cfg, replace(memory.Setup(), **kw))["total"]
    assert total(gpus=8) < total(gpus=4) < total(gpus=1)  # FSDP2 shards weights, gradients and AdamW
    assert total(grad_checkpoint=True) < total()
    assert total(lora_r=8, freeze_vision=True, parallel="ddp") < total(parallel="ddp")
    assert total(precision="fp32") > total()
    assert total(stage="grpo", beta=0.0) < total(stage="grpo")  # the reference model
    e = memory.estimate(cfg, memory.Setup(parallel="fsdp", gpus=8))
    n = sum(p.numel() for p in VideoLM.from_config(cfg, device="meta").parameters())
    assert e["weights"] + e["grads"] + e["adamw"] == pytest.approx(16 * n / 8)  # fp32 weights, grads, 2 states
    assert "qwen2.5-vl-7b" in memory.table(memory.Setup())


# ----------------------------------------------------------------------------------------------- gpu_check.sh

def test_gpu_check_runs_on_cpu(tmp_path):
    p = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_check.sh"), "--device", "cpu", "--tiny", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    r = json.load(open(tmp_path / "gpu_check.json"))
    assert set(r["sections"]) == {"logits", "train", "rollout", "trl"}
    assert r["sections"]["logits"]["bf16-mixed"]["top1_agreement"] > 0.9
    tr = r["sections"]["train"]
    assert tr["bf16-mixed"]["master_dtype"] == tr["bf16-mixed"]["adamw_dtype"] == "{torch.float32}"
    assert r["sections"]["rollout"]["batch1_tok_s"] > 0
    md = open(tmp_path / "gpu_check.md").read()
    assert "bf16 vs fp32 logits" in md and "| bf16-mixed |" in md and "ours vs transformers generate" in md
