"""Stage 1 of ST-R1: long chain-of-thought SFT (paper Sec. 3.2). Trains on the answer tokens only.

    python train_sft.py                                   # tiny model, synthetic world, CPU
    torchrun --nproc_per_node=8 train_sft.py --model /path/Qwen2-VL-7B-Instruct --train-file ego_st.jsonl \
        --video-root /data/videos --parallel fsdp --lr 1e-5
"""
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from st_r1 import checkpoint, cli, data, dist, precision, runs
from st_r1.training import batch_rows, cosine_schedule, resumed_counts, sft_loss


@dataclass
class Config:
    """Long chain-of-thought SFT of a Qwen2-VL / Qwen2.5-VL video model on Ego-ST rows."""
    model: str = ""                # HF folder; empty: the tiny random Qwen2.5-VL of the synthetic world (made if missing)
    bench: str = "data/world"      # synthetic bench folder (made by st_r1.world if missing) when no files are given
    train_file: str = ""           # Ego-ST JSONL; default {bench}/train.jsonl
    eval_file: str = ""            # held-out JSONL; default {bench}/test.jsonl
    video_root: str = ""           # relative video paths resolve here; default: the JSONL's folder
    out: str = "runs/sft"
    resume: bool = False           # continue from the latest checkpoint in --out
    resume_from: str = ""          # continue from this checkpoint folder of --out (e.g. the one before a corrupt latest)
    steps: int = 300
    batch_size: int = 16           # global batch (rows), split over ranks and micro-batches
    micro_batch: int = 8           # rows per forward/backward on one rank (gradient accumulation above it)
    lr: float = 2e-3               # tiny model from scratch; use ~1e-5 for a real checkpoint
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    answer_only: bool = False      # baseline: train on "<answer>X</answer>" without the chain of thought
    num_frames: int = 8
    min_pixels: int = 56 * 56
    max_pixels: int = 128 * 28 * 28
    max_seq_len: int = 0           # longer rows (video included) are skipped and counted; 0: the model's context
    freeze_vision: bool = False
    grad_checkpoint: bool = False
    lora_r: int = 0                # > 0: LoRA adapters of this rank on the decoder's attention, merged on save
    parallel: str = "ddp"          # ddp | fsdp (FSDP2, one unit per block) | none
    precision: str = ""            # fp32 | bf16-mixed | bf16 (st_r1/precision.py); empty: bf16-mixed on CUDA, else fp32
    eval_every: int = 100
    eval_limit: int = 128
    max_new_tokens: int = 256     # the longest reference CoT on the synthetic world is ~230 tokens
    save_every: int = 100
    keep_every: int = 0            # also keep the checkpoints at multiples of this (the newest 2 are always kept)
    seed: int = 0


def answer_only(row):
    """The answer-only baseline: same rows, the <think> block dropped from the target."""
    gold = row.get("original_answer", "")
    return dict(row, solution=f"<answer>{gold}</answer>")


def validate(cfg, world_size):
    """Refuse flag values that would crash steps later or train nothing, naming the flag."""
    cli.check(cfg.steps >= 1, "steps", f"must be >= 1, got {cfg.steps}")
    cli.check(cfg.batch_size >= world_size, "batch_size", f"must be >= the {world_size} ranks (each needs a row), "
              f"got {cfg.batch_size}")
    cli.check(cfg.micro_batch >= 1, "micro_batch", f"must be >= 1, got {cfg.micro_batch}")
    cli.check(cfg.save_every >= 1, "save_every", f"must be >= 1, got {cfg.save_every}")
    cli.check(cfg.eval_every >= 0 and cfg.eval_limit >= 0, "eval_every", "and --eval-limit must be >= 0")
    cli.check(cfg.lr > 0 and cfg.warmup >= 0, "lr", f"must be > 0 (and --warmup >= 0), got {cfg.lr}")
    cli.check(cfg.num_frames >= 1, "num_frames", f"must be >= 1, got {cfg.num_frames}")
    cli.check(0 < cfg.min_pixels <= cfg.max_pixels, "min_pixels", "must be > 0 and <= --max-pixels")
    cli.check(cfg.max_seq_len >= 0 and cfg.lora_r >= 0, "max_seq_len", "and --lora-r must be >= 0")
    cli.check(cfg.parallel in ("ddp", "fsdp", "none"), "parallel", f"must be ddp, fsdp or none, got {cfg.parallel!r}")
    cli.check(cfg.precision in ("",) + precision.POLICIES, "precision", f"must be one of {precision.POLICIES}, got "
              f"{cfg.precision!r}")


def main(cfg):
    d = dist.setup()
    validate(cfg, d.world_size)
    cfg.resume = cfg.resume or bool(cfg.resume_from)
    runs.refuse_mixing(cfg.out, cfg.resume)  # before anything is loaded or written
    for change in runs.resume_changes(cfg.out, cfg) if cfg.resume else ():
        dist.log(f"warning: resuming {cfg.out} with a flag changed from its config.json, {change}")
    dist.seed_everything(cfg.seed, d.rank)
    model_dir, train_file, eval_file = data.resolve_defaults(cfg, is_main=d.is_main)
    # the rows first: a typo in the data costs seconds, not the minutes of loading a 7B checkpoint
    rows = data.load_rows(train_file, need=("original_answer",) if cfg.answer_only else ("solution",))
    if cfg.answer_only:
        rows = [answer_only(r) for r in rows]
    eval_rows = data.load_rows(eval_file)[:cfg.eval_limit] if eval_file else []
    from st_r1.model import VideoLM
    tok = data.load_tokenizer(model_dir)
    prec = precision.policy(cfg.precision, d.device)
    precision.warn_if_pure(prec, dist.log)
    model = VideoLM.from_pretrained(model_dir, dtype=prec.param_dtype, device=d.device)
    if cfg.freeze_vision:
        model.visual.requires_grad_(False)
    if cfg.lora_r:
        from st_r1 import lora
        lora.apply_lora(model, r=cfg.lora_r)
    if cfg.grad_checkpoint:
        model.gradient_checkpointing = True
    precision.apply(model, prec)  # after freezing: frozen weights are stored in bf16 under bf16-mixed
    policy = dist.wrap_model(model, cfg.parallel, block_types=("DecoderLayer", "VisionBlock"),
                             mp_policy=precision.fsdp_policy(prec))
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    sched = cosine_schedule(opt, cfg.warmup, cfg.steps, cfg.min_lr_ratio)

    max_len = data.context_limit(model_dir, cfg.max_seq_len)
    enc = data.PromptEncoder(tok, cfg.video_root or os.path.dirname(train_file), cfg.num_frames, cfg.min_pixels,
                             cfg.max_pixels, model.spatial_merge_size, max_len=max_len, family=model.model_type)
    eval_enc = data.PromptEncoder(tok, cfg.video_root or os.path.dirname(eval_file or train_file), cfg.num_frames,
                                  cfg.min_pixels, cfg.max_pixels, model.spatial_merge_size, max_len=max_len,
                                  family=model.model_type)
    state = checkpoint.load_checkpoint(cfg.out, policy, opt, sched, cfg.resume_from or None) if cfg.resume else None
    step, skipped, skip_examples = resumed_counts(state)
    if d.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        runs.trim_log(cfg.out, step)  # the steps after the checkpoint are redone: log them once
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(asdict(cfg), f, indent=1)
    dist.log(f"SFT: {len(rows)} rows, {cfg.steps} steps of {cfg.batch_size}, world {d.world_size}, "
             f"{'resuming at step %d' % step if state else 'from ' + model_dir}")

    bar = tqdm(total=cfg.steps, initial=step, desc="sft", disable=not d.is_main, dynamic_ncols=True)
    while step < cfg.steps:
        t0 = time.perf_counter()
        global_rows = batch_rows(rows, step, cfg.batch_size, cfg.seed)
        mine = global_rows[d.rank::d.world_size]
        examples, bad = data.encode_rows(enc, mine, "encode_sft", skip_bad=True, log=lambda m: None)
        skip_examples += [f"{train_file}:{ln}: {why}" for ln, why in bad][:5 - len(skip_examples)]
        # one collective for the counts over all ranks: skipped rows, kept rows, answer tokens
        n_chunks_mine = -(-len(examples) // cfg.micro_batch)
        n_bad, n_good, n_tokens = (int(x) for x in dist.all_reduce_sum(torch.tensor(
            [len(bad), len(examples), sum(sum(1 for x in e["labels"][1:] if x != -100) for _, e in examples)],
            dtype=torch.float64)).tolist())
        skipped += n_bad
        if n_good == 0:
            raise data.DataError(f"step {step}: none of the {len(global_rows)} rows of the batch has a readable "
                                 f"video (that fits the context) on any rank ({skipped} rows skipped so far, e.g. "
                                 f"{(skip_examples or ['?'])[0]}); no model was trained past this point")
        # Every rank must make the same number of forward/backward passes (DDP all-reduces on the last one, FSDP2
        # gathers in every one): a rank with fewer readable rows pads with zero-weight passes of a blank input.
        n_chunks = int(dist.all_reduce_max(n_chunks_mine))
        chunks = [examples[i:i + cfg.micro_batch] for i in range(0, len(examples), cfg.micro_batch)]
        policy.train()
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in range(n_chunks):
            chunk = chunks[k] if k < len(chunks) else []
            batch = {key: v.to(d.device) for key, v in data.collate_prompts(
                [e for _, e in chunk] or [enc.blank_sft()], tok.pad_token_id).items()}
            with dist.no_sync(policy, k < n_chunks - 1):
                loss = sft_loss(policy, batch, max(n_tokens, 1)) * (1.0 if chunk else 0.0)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite SFT loss at step {step}, micro-batch {k} (rows "
                                             f"{[r.get('_line') for r, _ in chunk]} of {train_file}); no update was "
                                             f"made, the last checkpoint in {cfg.out} is intact")
                (loss * d.world_size).backward()  # DDP averages over ranks; the normaliser is already global
            loss_sum += loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        if not torch.isfinite(grad_norm):
            raise FloatingPointError(f"non-finite gradient norm at step {step}; no update was made")
        opt.step()
        sched.step()
        step += 1
        checkpoint.crash_point("step", step)
        loss_avg = dist.all_reduce_sum(loss_sum)
        dt = time.perf_counter() - t0
        rec = dict(step=step, loss=loss_avg, lr=sched.get_last_lr()[0], grad_norm=float(grad_norm),
                   tokens_per_s=n_tokens / dt, step_s=dt, skipped=skipped)
        if cfg.eval_every and eval_rows and (step % cfg.eval_every == 0 or step == cfg.steps):
            rec.update(evaluate_model(model, tok, eval_rows, eval_enc, cfg, d))
        if d.is_main:
            with open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoint.save_checkpoint(cfg.out, step, policy, opt, sched,
                                 dict(step=step, skipped=skipped, skip_examples=skip_examples), tokenizer=tok,
                                       keep_every=cfg.keep_every)
    bar.close()
    if skipped:
        dist.log(f"skipped {skipped} rows with unreadable videos (all ranks), e.g. {(skip_examples or ['?'])[0]}")
    dist.log(f"done: final model in {checkpoint.latest_model(cfg.out)}")
    dist.shutdown()


def evaluate_model(model, tok, rows, enc, cfg, d):
    """Greedy answers on the held-out rows, scored by the same code as evaluate.py (rank 0 only)."""
    if not d.is_main:
        return {}
    if cfg.parallel == "fsdp" and d.world_size > 1:  # sharded weights: rank 0 alone cannot run the model
        return {"eval_note": "skipped under FSDP; run evaluate.py on the checkpoint"}
    from st_r1 import scoring
    from st_r1.predictions import predict
    preds = predict(model, tok, rows, enc, batch_size=cfg.micro_batch, max_new_tokens=cfg.max_new_tokens)
    s = scoring.score_rows(rows, preds)
    return {"eval_accuracy": s["overall"]["accuracy"], "eval_n": s["overall"]["n"]}


if __name__ == "__main__":
    cli.run(main, Config)
