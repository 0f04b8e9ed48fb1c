"""BAIT and SSC crafted against a vision-transformer prior (issue: priors today are transformers).

The prior is a ViT-S-style model at width 0.125 with its initial weights (what is checked here is
the mechanics, not how well a trained prior transfers — that is a benchmark's question):

- SSC's S is the patch embedding + the first k blocks; its output is (N, T, D) tokens, whose D
  embedding dimensions play the channels (``ssc.channels_first``); S keeps the prior's weights,
  the mask has the share of D the config asks for, and the budget holds on the published bytes;
- BAIT's surrogates start from the prior (a fresh head) and learn the groups of their paradigm:
  under pf-k the embedding and the first k blocks stay the prior's;
- the token form of SSC's objective equals the map form on the same numbers.
"""
from __future__ import annotations

import math

import pytest
import torch

from ueperf.data.budget import measure
from ueperf.models import build_model
from ueperf.protections.bait import BAIT, BAITConfig
from ueperf.protections.ssc import SSC, SSCConfig, channels_first

from margins import GATE_SEED
from prior_methods import generate

WIDTH = 0.125


@pytest.fixture(scope="module")
def vit_prior(tmp_path_factory):
    torch.manual_seed(GATE_SEED)
    path = tmp_path_factory.mktemp("vit") / "vit_prior.pt"
    torch.save(build_model("vit_small", 10, 32, width=WIDTH).state_dict(), path)
    return path


def test_channels_first_gives_tokens_the_map_layout():
    maps = torch.randn(2, 5, 3, 4)                            # (N, C, H, W)
    tokens = maps.flatten(2).transpose(1, 2)                  # the same numbers as (N, T, D): T = H·W, D = C
    assert torch.equal(channels_first(maps), maps.flatten(2))
    assert torch.equal(channels_first(tokens), maps.flatten(2))


def test_ssc_crafts_against_a_vit_prior(cifar_arrays, vit_prior):
    s, pert, x, y, xp = generate(SSC(), SSCConfig(prior=str(vit_prior), model="vit_small", width=WIDTH, max_rounds=1,
                                                  train_steps=2, steps=3, alpha=2 / 255, probe_epochs=1,
                                                  batch_size=32, eval_batch_size=64), cifar_arrays, 32, seed=GATE_SEED)
    sh = pert.info["shallow"]
    assert sh["group"] == "blocks.0" and sh["frozen_groups"] == [0, 1]      # embed + block 1 (shallow_stage 1)
    dim = s.surrogate.embed_dim
    assert sh["channels"] == dim
    assert sh["mask_channels"] == len(sh["mask"]) == math.ceil(SSCConfig().rho * dim)
    state = torch.load(vit_prior, weights_only=True)
    sd = s.surrogate.state_dict()
    shallow = ("cls_token", "pos_embed", "patch_embed.", "blocks.0.")
    assert all(torch.equal(sd[k], state[k]) for k in state if k.startswith(shallow))
    assert measure(x, xp, "linf")["max_abs"] <= 8


def test_bait_crafts_against_a_vit_prior(cifar_arrays, vit_prior):
    b, pert, x, y, xp = generate(BAIT(), BAITConfig(prior=str(vit_prior), model="vit_small", width=WIDTH, passes=1,
                                                    inner_steps=1, steps=2, batch_size=16, regen_steps=2,
                                                    eval_batch_size=64, ensemble=True, ensemble_paradigms="ft,pf2,lp"),
                                 cifar_arrays, 32, seed=GATE_SEED)
    assert sorted(b.surrogates) == ["ft", "lp", "pf2"]
    state = torch.load(vit_prior, weights_only=True)
    for paradigm, sur in b.surrogates.items():
        sd = sur.state_dict()
        if paradigm.startswith("pf"):
            k = int(paradigm[2:])
            kept = ("cls_token", "pos_embed", "patch_embed.", *(f"blocks.{i}." for i in range(k)))
            assert all(torch.equal(sd[n], state[n]) for n in state if n.startswith(kept)), paradigm
        if paradigm == "lp":
            assert all(torch.equal(sd[n], state[n]) for n in state if not n.startswith(("head.", "norm."))), paradigm
    assert pert.delta.shape == x.shape and measure(x, xp, "linf")["max_abs"] <= 8
