"""One precision policy for the three scripts: --precision fp32 | bf16-mixed | bf16.

    fp32        weights, gradients, AdamW states and every op in fp32. The default on a CPU.
    bf16-mixed  fp32 master weights, gradients and AdamW states; the forward and backward compute in bf16.
                The default on CUDA. One process or DDP: torch.autocast inside VideoLM.forward. FSDP2:
                MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32), which all-gathers bf16 copies of the
                fp32 shards and reduce-scatters the gradients in fp32 (autocast then stays off: the weights it
                sees are bf16 already). Frozen weights (a frozen vision tower, LoRA's base) are stored in bf16:
                nothing updates them, so they need no fp32 master copy.
    bf16        everything in bf16, weights and AdamW states included: for the frozen GRPO reference and for
                evaluation. Training in it loses every update below bf16's resolution (2^-8 of the weight),
                a known cause of stalled fine-tuning; the scripts allow it but say so.

Whatever the policy, softmax, log-probs, the GRPO ratio and KL and the losses are computed in fp32: the model
returns logits in its compute dtype, and each consumer upcasts them before anything else (generate.pick,
grpo.completion_logprobs, training.sft_loss); grpo_loss then only sees fp32 log-probs. Inside the model,
RMSNorm normalises in fp32 and both rotary embeddings rotate in fp32.
"""
from dataclasses import dataclass

import torch

POLICIES = ("fp32", "bf16-mixed", "bf16")


@dataclass(frozen=True)
class Policy:
    name: str
    param_dtype: torch.dtype    # trainable weights, hence their gradients and AdamW states (master weights)
    compute_dtype: torch.dtype  # matmuls, activations, the KV cache
    ref_dtype: torch.dtype      # the frozen GRPO reference model (pure, no master copy: half the policy's memory)

    @property
    def mixed(self):
        return self.param_dtype != self.compute_dtype


def policy(name="", device="cpu"):
    """The Policy called `name`; an empty name picks the default of the device (bf16-mixed on CUDA, else fp32)."""
    if not name:
        name = "bf16-mixed" if torch.device(device).type == "cuda" else "fp32"
    if name not in POLICIES:
        raise ValueError(f"unknown precision {name!r}; expected one of {POLICIES}")
    f32, bf16 = torch.float32, torch.bfloat16
    return {"fp32": Policy(name, f32, f32, f32),
            "bf16-mixed": Policy(name, f32, bf16, bf16),
            "bf16": Policy(name, bf16, bf16, bf16)}[name]


def apply(model, pol):
    """Give a model loaded in pol.param_dtype its compute dtype; call it after freezing parameters (--freeze-vision,
    LoRA): under bf16-mixed the frozen ones are stored in bf16. Returns the model."""
    model.compute_dtype = pol.compute_dtype if pol.mixed else None
    if pol.mixed:
        for p in model.parameters():
            if not p.requires_grad:
                p.data = p.data.to(pol.compute_dtype)  # in place on the Parameter: tied and shared uses follow
    return model


def fsdp_policy(pol):
    """FSDP2's MixedPrecisionPolicy for bf16-mixed (bf16 all-gather and compute, fp32 gradient reduction), else None."""
    if not pol.mixed:
        return None
    from torch.distributed.fsdp import MixedPrecisionPolicy
    # no input casts at the blocks: their activations arrive in bf16 anyway (bf16 embeddings), and the rotary
    # cos / sin they are handed must stay fp32
    return MixedPrecisionPolicy(param_dtype=pol.compute_dtype, reduce_dtype=pol.param_dtype,
                                cast_forward_inputs=False)


def warn_if_pure(pol, log=print):
    if pol.name == "bf16":
        log("warning: --precision bf16 trains bf16 weights with bf16 AdamW states: updates below bf16's resolution "
            "are lost. Use bf16-mixed to train; bf16 is meant for evaluation and the frozen reference.")
