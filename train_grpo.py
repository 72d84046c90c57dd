"""Stage 2 of ST-R1: GRPO with the reverse-thinking reward (paper Sec. 3.3; maths in st_r1/grpo.py).

    python train_grpo.py                                  # the SFT'd tiny model on the synthetic world, CPU
    torchrun --nproc_per_node=8 train_grpo.py --model runs/sft/latest --train-file ego_st.jsonl --video-root ...
"""
import json
import os
import random
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from st_r1 import checkpoint, cli, data, dist, grpo, precision, rewards, runs
from st_r1.predictions import completion_texts
from st_r1.training import batch_rows, cosine_schedule, resumed_counts


@dataclass
class Config:
    """GRPO of a video model on Ego-ST rows with format, accuracy, reverse-thinking and route rewards."""
    model: str = ""                # HF folder; empty: the latest checkpoint of runs/sft, else the tiny random model
    bench: str = "data/world"
    train_file: str = ""
    eval_file: str = ""
    video_root: str = ""
    out: str = "runs/grpo"
    resume: bool = False
    resume_from: str = ""          # continue from this checkpoint folder of --out (e.g. the one before a corrupt latest)
    steps: int = 60
    prompts_per_step: int = 8      # global; each prompt gets group_size completions
    group_size: int = 8            # G
    micro_batch: int = 16          # completion rows per forward/backward (whole groups: rounded down to G x k, >= G)
    max_new_tokens: int = 256     # the longest reference CoT on the synthetic world is ~230 tokens
    temperature: float = 1.0
    top_p: float = 1.0
    lr: float = 2e-5
    warmup: int = 0
    min_lr_ratio: float = 1.0
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    num_iterations: int = 1        # mu
    adv_scale: str = "group"       # group | batch | none (Dr. GRPO)
    oversample: int = 1            # > 1: DAPO's dynamic sampling, prompts_per_step x this many drawn, groups whose
    #                                rewards are all equal dropped, up to prompts_per_step kept for the update
    loss_agg: str = "seq_mean"     # seq_mean | token_mean | constant
    entropy_frac: float = 1.0      # < 1: policy gradient on the top fraction of tokens by entropy (grpo.forking_tokens)
    mask_truncated: bool = False
    max_grad_norm: float = 1.0
    reward_weights: str = "format=0.5,accuracy=1,reverse_thinking=0.5,route=1"  # add temporal=1 for T-GRPO
    gate_reverse_on_correct: bool = True
    num_frames: int = 8
    min_pixels: int = 56 * 56
    max_pixels: int = 128 * 28 * 28
    max_seq_len: int = 0           # longer prompts (video included) give way to the next row; 0: the model's context
    freeze_vision: bool = False
    parallel: str = "ddp"
    precision: str = ""            # fp32 | bf16-mixed | bf16 (st_r1/precision.py); empty: bf16-mixed on CUDA, else fp32
    eval_every: int = 0
    eval_limit: int = 128
    save_every: int = 20
    seed: int = 0


def reward_functions(cfg):
    fns = dict(rewards.REWARDS)
    if "reverse_thinking" in fns:
        fns["reverse_thinking"] = lambda t, r: rewards.reverse_thinking_reward(
            t, r, gate_on_correct=cfg.gate_reverse_on_correct)
    return fns


def sampling_generators(cfg, step, prompt_ids):
    """One generator per prompt, seeded by (seed, step, the prompt's place in the global batch): the samples do
    not depend on how the batch is split over ranks, and a resumed run draws the same ones."""
    return [torch.Generator().manual_seed(cfg.seed * 1_000_003 + step * 1009 + i) for i in prompt_ids]


def readable_prompt(enc, rows, row, seed, step, slot):
    """(row, encoded prompt, [(line, why) of the rows passed over]) for one prompt slot of the global batch. A row
    whose video cannot be read gives way to the next readable row of a fixed permutation seeded by (seed, step,
    slot), so every rank and every resume draws the same replacement. No readable row at all is a DataError."""
    from st_r1.video import VideoError
    bad, order = [], None
    while True:
        try:
            return row, enc.encode(row), bad
        except (VideoError, data.TooLong) as e:
            bad.append((row.get("_line"), str(e)))
        if order is None:
            order = list(range(len(rows)))
            random.Random(seed * 1_000_003 + step * 1009 + slot).shuffle(order)
        if len(bad) > len(rows):
            raise data.DataError(f"no row has a readable video (all {len(rows)} tried), e.g. line {bad[0][0]}: "
                                 f"{bad[0][1]}")
        row = rows[order[len(bad) - 1]]


def kept_groups(total, prompt_ids, cfg, n_draw):
    """DAPO's dynamic sampling, the same choice on every rank: of the n_draw prompts drawn (slot order), the first
    prompts_per_step whose G rewards are not all equal. Returns (this rank's kept prompt indices, kept in all)."""
    r = total.view(-1, cfg.group_size)
    spread = torch.zeros(n_draw, dtype=torch.float64)
    spread[prompt_ids] = (r.max(1).values > r.min(1).values).double()
    spread = dist.all_reduce_sum(spread)
    chosen = set(torch.nonzero(spread > 0).flatten().tolist()[:cfg.prompts_per_step])
    return [i for i, pid in enumerate(prompt_ids) if pid in chosen], len(chosen)


def reference_model(model_dir, prec, device):
    """The frozen reference (paper: KL to pi_ref) is the starting checkpoint, held in prec.ref_dtype: pure bf16 under
    the mixed policies (half the policy's fp32 memory, and nothing updates it), fp32 under fp32."""
    from st_r1.model import VideoLM
    return VideoLM.from_pretrained(model_dir, dtype=prec.ref_dtype, device=device).eval().requires_grad_(False)


def validate(cfg, world_size):
    """Refuse flag values that would crash steps later or learn nothing, naming the flag."""
    cli.check(cfg.steps >= 1, "steps", f"must be >= 1, got {cfg.steps}")
    cli.check(cfg.prompts_per_step >= world_size, "prompts_per_step", f"must be >= the {world_size} ranks (each "
              f"needs a prompt), got {cfg.prompts_per_step}")
    cli.check(cfg.group_size >= 2, "group_size", f"must be >= 2: one sample has advantage 0 and nothing is learned, "
              f"got {cfg.group_size}")
    cli.check(cfg.micro_batch >= 1 and cfg.max_new_tokens >= 1, "micro_batch", "and --max-new-tokens must be >= 1")
    cli.check(cfg.save_every >= 1, "save_every", f"must be >= 1, got {cfg.save_every}")
    cli.check(cfg.temperature > 0 and 0 < cfg.top_p <= 1, "temperature", "must be > 0 and --top-p in (0, 1]")
    cli.check(cfg.lr > 0 and cfg.beta >= 0 and cfg.num_iterations >= 1, "lr", "must be > 0, --beta >= 0 and "
              "--num-iterations >= 1")
    cli.check(cfg.oversample >= 1, "oversample", f"must be >= 1, got {cfg.oversample}")
    cli.check(0 < cfg.entropy_frac <= 1, "entropy_frac", f"must be in (0, 1], got {cfg.entropy_frac}")
    cli.check(cfg.adv_scale in ("group", "batch", "none"), "adv_scale", "must be group, batch or none")
    cli.check(cfg.loss_agg in ("seq_mean", "token_mean", "constant"), "loss_agg", "must be seq_mean, token_mean "
              "or constant")
    cli.check(cfg.num_frames >= 1 and 0 < cfg.min_pixels <= cfg.max_pixels, "num_frames", "must be >= 1 and "
              "0 < --min-pixels <= --max-pixels")
    cli.check(cfg.parallel in ("ddp", "fsdp", "none"), "parallel", f"must be ddp, fsdp or none, got {cfg.parallel!r}")
    cli.check(cfg.precision in ("",) + precision.POLICIES, "precision", f"must be one of {precision.POLICIES}, got "
              f"{cfg.precision!r}")
    try:
        rewards.parse_weights(cfg.reward_weights)
    except (ValueError, KeyError) as e:
        raise cli.UserError(f"--reward-weights: {e}") from None


def main(cfg):
    d = dist.setup()
    validate(cfg, d.world_size)
    cfg.resume = cfg.resume or bool(cfg.resume_from)
    runs.refuse_mixing(cfg.out, cfg.resume)  # before anything is loaded or written
    for change in runs.resume_changes(cfg.out, cfg) if cfg.resume else ():
        dist.log(f"warning: resuming {cfg.out} with a flag changed from its config.json, {change}")
    dist.seed_everything(cfg.seed, d.rank)
    if not cfg.model and checkpoint.latest_model("runs/sft"):
        cfg.model = checkpoint.latest_model("runs/sft")  # the default chain: SFT, then GRPO
    model_dir, train_file, eval_file = data.resolve_defaults(cfg, is_main=d.is_main)
    # the rows first: a typo in the data costs seconds, not the minutes of loading a 7B checkpoint (twice)
    rows = data.load_rows(train_file)
    rewards.attach_recall_truth(rows)  # reverse-thinking truth for the authors' rows (ours carry `events`)
    from st_r1 import chat
    from st_r1.model import VideoLM
    tok = data.load_tokenizer(model_dir)
    eos_ids = chat.end_of_turn_ids(tok)
    prec = precision.policy(cfg.precision, d.device)
    precision.warn_if_pure(prec, dist.log)
    model = VideoLM.from_pretrained(model_dir, dtype=prec.param_dtype, device=d.device)
    if cfg.freeze_vision:
        model.visual.requires_grad_(False)
    precision.apply(model, prec)  # after freezing: frozen weights are stored in bf16 under bf16-mixed
    ref = reference_model(model_dir, prec, d.device) if cfg.beta else None
    fsdp = cfg.parallel == "fsdp" and d.world_size > 1  # sharded: every rank joins every decoding step
    policy = dist.wrap_model(model, cfg.parallel, block_types=("DecoderLayer", "VisionBlock"),
                             mp_policy=precision.fsdp_policy(prec))
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    sched = cosine_schedule(opt, cfg.warmup, cfg.steps, cfg.min_lr_ratio)
    weights = rewards.parse_weights(cfg.reward_weights)
    fns = reward_functions(cfg)
    use_temporal = weights.pop("temporal", 0.0)
    gcfg = grpo.GRPOConfig(cfg.group_size, cfg.temperature, cfg.top_p, cfg.max_new_tokens, cfg.beta, cfg.eps_low,
                           cfg.eps_high, cfg.num_iterations, cfg.adv_scale, cfg.loss_agg, cfg.mask_truncated,
                           cfg.micro_batch, cfg.max_grad_norm, cfg.entropy_frac)

    enc = data.PromptEncoder(tok, cfg.video_root or os.path.dirname(train_file), cfg.num_frames, cfg.min_pixels,
                             cfg.max_pixels, model.spatial_merge_size,
                             max_len=data.context_limit(model_dir, cfg.max_seq_len), family=model.model_type)
    state = checkpoint.load_checkpoint(cfg.out, policy, opt, sched, cfg.resume_from or None) if cfg.resume else None
    step, skipped, skip_examples = resumed_counts(state)
    if d.is_main:
        os.makedirs(cfg.out, exist_ok=True)
        runs.trim_log(cfg.out, step)  # the steps after the checkpoint are redone: log them once
        with open(os.path.join(cfg.out, "config.json"), "w") as f:
            json.dump(dict(asdict(cfg), model=model_dir), f, indent=1)
    dist.log(f"GRPO: {len(rows)} rows from {train_file}, model {model_dir}, G={cfg.group_size}, "
             f"{cfg.prompts_per_step} prompts/step, rewards {weights}{' + temporal' if use_temporal else ''}")

    bar = tqdm(total=cfg.steps, initial=step, desc="grpo", disable=not d.is_main, dynamic_ncols=True)
    while step < cfg.steps:
        timer, t0 = grpo.Timer(), time.perf_counter()
        # oversample > 1 (DAPO's dynamic sampling): each round draws prompts_per_step more prompts; the update keeps
        # the first prompts_per_step groups whose rewards differ, since an all-equal group has advantage 0
        n_draw = cfg.prompts_per_step * cfg.oversample
        global_rows = batch_rows(rows, step, n_draw, cfg.seed)
        drawn = []  # per round: (prompt rows, encoded prompts, generation, per-reward scores, total reward)
        for rnd in range(cfg.oversample):
            encoded, bad = [], []
            first = rnd * cfg.prompts_per_step
            for i in list(range(first, first + cfg.prompts_per_step))[d.rank::d.world_size]:
                row, ex, passed = readable_prompt(enc, rows, global_rows[i], cfg.seed, step, i)
                encoded.append((dict(row, _prompt_id=i), ex))
                bad += passed
            skip_examples += [f"{train_file}:{ln}: {why}" for ln, why in bad][:5 - len(skip_examples)]
            skipped += int(dist.all_reduce_sum(len(bad)))
            prompt_rows = [r for r, _ in encoded]
            pids = [r["_prompt_id"] for r in prompt_rows]
            batch = {k: v.to(d.device) for k, v in data.collate_prompts([e for _, e in encoded],
                                                                        tok.pad_token_id).items()}
            policy.eval()
            with timer("rollout"):
                gen = grpo.rollout(model, batch, gcfg, eos_ids, tok.pad_token_id, sampling_generators(cfg, step, pids),
                                   fsdp)
            texts = completion_texts(tok, gen, eos_ids)
            sample_rows = [r for r in prompt_rows for _ in range(cfg.group_size)]
            per_fn, total = grpo.score(texts, sample_rows, fns, weights)
            names = list(weights)
            if use_temporal:  # T-GRPO baseline: the same prompts with shuffled frames
                shuf = [enc.encode(r, shuffle_seed=cfg.seed + step) for r in prompt_rows]
                sbatch = {k: v.to(d.device) for k, v in data.collate_prompts(shuf, tok.pad_token_id).items()}
                with timer("rollout"):
                    sgen = grpo.rollout(model, sbatch, gcfg, eos_ids, tok.pad_token_id,
                                        sampling_generators(cfg, step + 10**6, pids), fsdp)
                acc = torch.tensor([fns["accuracy"](t, r) for t, r in zip(texts, sample_rows)])
                sacc = torch.tensor([fns["accuracy"](t, r) for t, r in zip(completion_texts(tok, sgen, eos_ids),
                                                                             sample_rows)])
                bonus = grpo.temporal_bonus(acc, sacc, cfg.group_size)
                total = total + use_temporal * bonus
                per_fn, names = torch.cat([per_fn, bonus[:, None]], 1), names + ["temporal"]
            drawn.append((prompt_rows, [e for _, e in encoded], gen, per_fn, total))
        # the policy's numbers are over every drawn sample; the update sees the kept groups
        prompt_rows = [r for rnd in drawn for r in rnd[0]]
        gen = grpo.cat_generations([rnd[2] for rnd in drawn], tok.pad_token_id)
        per_fn, total = torch.cat([rnd[3] for rnd in drawn]), torch.cat([rnd[4] for rnd in drawn])
        sample_rows = [r for r in prompt_rows for _ in range(cfg.group_size)]
        _, frac_zero_std = grpo.group_advantages(total, cfg.group_size, cfg.adv_scale)
        keep, kept_global = list(range(len(prompt_rows))), n_draw
        if cfg.oversample > 1:
            keep, kept_global = kept_groups(total, [r["_prompt_id"] for r in prompt_rows], cfg, n_draw)
        rows_kept = [i * cfg.group_size + g for i in keep for g in range(cfg.group_size)]
        if len(drawn) == 1 and len(keep) == len(prompt_rows):  # nothing dropped: the rollout's own batch
            upd_batch, upd_gen = batch, gen
        else:
            examples = [e for rnd in drawn for e in rnd[1]]
            upd_batch = {k: v.to(d.device) for k, v in data.collate_prompts([examples[i] for i in keep or [0]],
                                                                            tok.pad_token_id).items()}
            upd_gen = grpo.select_generation(gen, rows_kept or list(range(cfg.group_size)))
        advantages, _ = grpo.group_advantages(total[rows_kept] if keep else torch.zeros(cfg.group_size),
                                              cfg.group_size, cfg.adv_scale)
        # a rank left with no kept group joins the collectives with its first group at weight 0 (blank)
        stats = grpo.update(policy, ref, opt, upd_batch, upd_gen, advantages.to(d.device), gcfg, timer, step,
                            blank=not keep)
        sched.step()
        step += 1
        checkpoint.crash_point("step", step)

        lengths = gen.mask.sum(1).float()
        n_gen = lengths.sum().item()
        rec = dict(step=step, reward=total.mean().item(), reward_std=total.std().item() if total.numel() > 1 else 0.0,
                   **{f"reward/{n}": per_fn[:, i].mean().item() for i, n in enumerate(names)},
                   **{f"reward_std/{n}": per_fn[:, i].std().item() if len(per_fn) > 1 else 0.0
                      for i, n in enumerate(names)},
                   frac_zero_std=frac_zero_std, completion_len=lengths.mean().item(),
                   completion_len_max=lengths.max().item(), truncated=gen.truncated.float().mean().item(),
                   rollout_tok_s=n_gen / max(timer.t.get("rollout", 0), 1e-9),
                   train_tok_s=n_gen * cfg.num_iterations / max(timer.t.get("update", 0), 1e-9),
                   **{f"time/{k}": v for k, v in timer.t.items()}, step_s=time.perf_counter() - t0,
                   lr=sched.get_last_lr()[0], **stats, skipped=skipped)
        if cfg.oversample > 1:
            # prompts rolled out / kept for the update, and ranks that had none of theirs kept (all ranks)
            rec.update(drawn=n_draw, kept=kept_global, idle_ranks=int(dist.all_reduce_sum(int(not keep))))
        if "accuracy" in names:
            mc = [i for i, r in enumerate(sample_rows) if r.get("task", "mcq") != "route"]
            rec["accuracy"] = per_fn[mc, names.index("accuracy")].mean().item() if mc else 0.0
        # each rank's loss is its part of the global one (global normalisers): the parts add up, the rest average
        rec["loss"] *= d.world_size
        keys = [k for k, v in rec.items() if isinstance(v, float)]  # one collective for the whole record
        rec.update(zip(keys, dist.all_reduce_mean(torch.tensor([rec[k] for k in keys], dtype=torch.float64)).tolist()))
        if d.is_main:
            with open(os.path.join(cfg.out, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
        bar.set_postfix(reward=f"{rec['reward']:.3f}", acc=f"{rec.get('accuracy', 0):.2f}", kl=f"{rec['kl']:.4f}")
        bar.update(1)
        if step % cfg.save_every == 0 or step == cfg.steps:
            checkpoint.save_checkpoint(cfg.out, step, policy, opt, sched,
                                 dict(step=step, skipped=skipped, skip_examples=skip_examples), tokenizer=tok)
    bar.close()
    if skipped:
        dist.log(f"skipped {skipped} rows with unreadable videos (all ranks; each replaced by the next readable "
                 f"row), e.g. {(skip_examples or ['?'])[0]}")
    dist.log(f"done: final model in {checkpoint.latest_model(cfg.out)}")
    dist.shutdown()


if __name__ == "__main__":
    cli.run(main, Config)
