"""st_r1.lora: zero-effect start, exact merge, only adapters train."""
import pytest
import torch
import torch.nn as nn

from st_r1.lora import LoRALinear, apply_lora, lora_parameters, merge_lora


class Attn(nn.Module):
    def __init__(self, d=12):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d), nn.Linear(d, 4), nn.Linear(d, 4, bias=False)
        self.o_proj, self.up = nn.Linear(4, d), nn.Linear(d, d)

    def forward(self, x):
        return self.up(torch.tanh(self.o_proj(torch.tanh(self.k_proj(x)) * self.v_proj(x))) + self.q_proj(x))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(Attn(), Attn())


def test_initial_output_unchanged_and_targets():
    model, x = _model(), torch.randn(3, 5, 12)
    before = model(x)
    keys = set(model.state_dict())
    names = apply_lora(model, r=2, alpha=4)
    assert sorted(names) == sorted(f"{i}.{p}" for i in "01" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
    assert isinstance(model[0].k_proj, LoRALinear) and type(model[0].up) is nn.Linear
    assert torch.equal(model(x), before)  # B = 0
    # base tensors keep their names, so a plain checkpoint still loads (strict=False for the adapters)
    assert keys <= set(model.state_dict())
    assert model[1].o_proj.lora_A.shape == (2, 4) and model[1].o_proj.lora_B.shape == (12, 2)


def test_merge_equals_adapter_output():
    model, x = _model(), torch.randn(3, 5, 12)
    apply_lora(model, r=3, alpha=6)
    with torch.no_grad():
        for p in lora_parameters(model):
            p.normal_(0, 0.3)
    adapted = model(x)
    base = _model()(x)
    assert not torch.allclose(adapted, base, atol=1e-3)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert all(type(m[0].q_proj) is nn.Linear for m in [model])
    assert set(model.state_dict()) == set(_model().state_dict())
    assert torch.allclose(model(x), adapted, atol=1e-5)
    # hand check of one merged weight: W + (alpha / r) B A
    m = _model()
    apply_lora(m, r=3, alpha=6)
    with torch.no_grad():
        m[0].q_proj.lora_B.fill_(0.1)
    w = m[0].q_proj.weight.clone() + 2.0 * m[0].q_proj.lora_B @ m[0].q_proj.lora_A
    merge_lora(m)
    assert torch.allclose(m[0].q_proj.weight, w, atol=1e-6)


def test_only_adapters_train():
    model = _model()
    apply_lora(model, r=2, alpha=2, dropout=0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in lora_parameters(model)}
    assert len(trainable) == 2 * 4 * 2
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        model(torch.randn(4, 12)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for k, v in frozen.items():
        assert torch.equal(after[k], v) == ("lora_" not in k), k


def test_no_match_is_an_error():
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(_model(), targets=("gate_proj",))
