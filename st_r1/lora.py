"""LoRA adapters (Hu et al. 2021): W x + (alpha/r) * B A x, with W frozen, A (r, in), B (out, r).

ST-R1's authors fine-tune with r=8 adapters on the decoder's attention projections. We write the
adapter ourselves: `apply_lora` swaps matching nn.Linear modules for `LoRALinear` (a subclass, so
the base tensors keep their names `<module>.weight` / `.bias` and a state dict still loads), and
`merge_lora` folds the update into W and puts plain nn.Linear back, so `save_pretrained` writes an
ordinary Hugging Face checkpoint.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LoRALinear(nn.Linear):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float):
        nn.Module.__init__(self)  # reuse the base's tensors instead of allocating new ones
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        kw = dict(dtype=base.weight.dtype, device=base.weight.device)
        # A Kaiming-uniform (as nn.Linear initialises), B zero: B A = 0, so the initial output is unchanged.
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **kw))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **kw))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(self.lora_dropout(x), self.lora_A),
                                                             self.lora_B) * self.scale

    def delta(self):
        """The weight update (alpha/r) B A, computed in float32."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scale

    def extra_repr(self):
        return f"{super().extra_repr()}, r={self.r}, alpha={self.alpha}"


def _swap(model, name, new):
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def apply_lora(model, r=8, alpha=16, dropout=0.0, targets=("q_proj", "k_proj", "v_proj", "o_proj")):
    """Freeze every parameter of `model`, then wrap each nn.Linear whose name ends in one of `targets`.
    Returns the list of wrapped module names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = [n for n, m in model.named_modules()
             if type(m) is nn.Linear and n.rpartition(".")[2] in targets]
    if not names:
        raise ValueError(f"apply_lora: no nn.Linear named one of {targets} in {type(model).__name__}")
    for n in names:
        _swap(model, n, LoRALinear(model.get_submodule(n), r, alpha, dropout))
    return names


@torch.no_grad()
def merge_lora(model):
    """Fold every adapter into its base weight and restore plain nn.Linear modules (in place)."""
    for n, m in list(model.named_modules()):
        if isinstance(m, LoRALinear):
            m.weight.copy_((m.weight.float() + m.delta()).to(m.weight.dtype))
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
            lin.weight, lin.bias = m.weight, m.bias
            _swap(model, n, lin)
    return model


def lora_parameters(model):
    """The trainable adapter tensors (A and B of every LoRALinear), for the optimizer."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def split_state_dict(model, sd):
    """For a checkpoint of an adapted model: (`sd` with the adapters merged into plain HF weights, the LoRA tensors).
    The LoRA part keeps A, B and the unmerged base weight: re-splitting the merged weight in bf16 would not give the
    base back exactly."""
    merged, lora = dict(sd), {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            a, b, w = (merged.pop(f"{name}.lora_A"), merged.pop(f"{name}.lora_B"), sd[f"{name}.weight"])
            lora.update({f"{name}.lora_A": a, f"{name}.lora_B": b, f"{name}.weight": w})
            merged[f"{name}.weight"] = (w.float() + (b.float() @ a.float()) * m.scale).to(w.dtype)
    return merged, lora
