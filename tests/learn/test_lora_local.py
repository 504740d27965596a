"""Local LoRA training over our torch forward on stories260K, and the GGUF adapter it becomes: llama.cpp
with the adapter computes what the trained model computes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgegen.errors import InvalidModelError
from edgegen.learn.config import LearnConfig
from edgegen.learn.data import local_tokens
from edgegen.learn.loop import adapter_from_result, conversion_check
from edgegen.learn.lora import LoraModel, LoraSpec, initial_arrays, load_base


@pytest.fixture(scope="module")
def trained(stories_gguf, device_texts, tmp_path_factory):  # type: ignore[no-untyped-def]
    text = local_tokens(device_texts["hamlet"], stories_gguf, cache_dir=tmp_path_factory.mktemp("tok"))
    model = LoraModel(load_base(stories_gguf), LoraSpec())
    before = model.perplexity(text.heldout, 64, 4)
    stats = model.train(text.train, steps=30, lr=3e-3)
    return model, text, before, stats


def test_local_training_lowers_held_out_perplexity(trained) -> None:  # type: ignore[no-untyped-def]
    model, text, before, stats = trained
    assert stats.steps == 30
    assert model.perplexity(text.heldout, 64, 4) < 0.9 * before


def test_ffa_lora_ships_only_b_and_a_is_shared(trained, stories_gguf) -> None:  # type: ignore[no-untyped-def]
    model, *_ = trained
    arrays = model.arrays()
    assert len(arrays) == len(model.names)  # one B per adapted tensor, no A
    assert all(a.shape[1] == 8 for a in arrays)
    init = initial_arrays(stories_gguf, LoraSpec())
    assert [a.shape for a in init] == [a.shape for a in arrays] and not any(a.any() for a in init)
    other = LoraModel(load_base(stories_gguf), LoraSpec())  # another party derives the same frozen A
    for n in model.names:
        np.testing.assert_array_equal(other.A[n].numpy(), model.A[n].numpy())
    with pytest.raises(InvalidModelError):
        other.set_arrays(arrays[:-1])


def test_the_gguf_adapter_computes_what_the_trained_model_computes(trained, stories_gguf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model, *_ = trained
    np.savez(tmp_path / "global.npz", *model.arrays())
    cfg = LearnConfig(model=str(stories_gguf))
    adapter, pairs = adapter_from_result(tmp_path, cfg, "t")
    check = conversion_check(cfg, adapter, tmp_path)
    assert check["adapter_top1_agreement"] >= 0.95, check
    assert check["adapter_effect_mean_abs"] > 10 * check["adapter_mean_abs_logit_diff"], check


def test_an_empty_text_folder_is_refused(stories_gguf, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edgegen.errors import InvalidTextError

    with pytest.raises(InvalidTextError):
        local_tokens(tmp_path, stories_gguf)
    (tmp_path / "a.txt").write_text("too short")
    with pytest.raises(InvalidTextError):
        local_tokens(tmp_path, stories_gguf)


def test_fedprox_term_keeps_the_local_factors_near_the_global_ones(stories_gguf, device_texts) -> None:  # type: ignore[no-untyped-def]
    text = local_tokens(device_texts["macbeth"], stories_gguf)
    model = LoraModel(load_base(stories_gguf), LoraSpec())
    zero = [np.zeros_like(a) for a in model.arrays()]
    drift = {}
    for mu in (0.0, 1000.0):
        model.set_arrays(zero)
        model.train(text.train, steps=15, lr=3e-3, prox_mu=mu, seed=3)
        drift[mu] = float(np.sqrt(sum((a ** 2).sum() for a in model.arrays())))
    assert drift[1000.0] < 0.5 * drift[0.0], drift


def test_strategies_are_flowers(stories_gguf) -> None:  # type: ignore[no-untyped-def]
    from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedProx

    from edgegen.learn.apps import _Recorder, build_strategy
    from edgegen.learn.config import StrategyName

    init = initial_arrays(stories_gguf, LoraSpec())
    rec = _Recorder(Path("."), audit=False)
    dp = build_strategy(LearnConfig(model=str(stories_gguf), min_clients=3), init, rec)
    assert isinstance(dp, DifferentialPrivacyClientSideFixedClipping)
    prox = build_strategy(LearnConfig(strategy=StrategyName.FEDPROX, noise_multiplier=0.0, proximal_mu=0.1), init, rec)
    assert isinstance(prox.inner, FedProx) and prox.inner.proximal_mu == 0.1
    adam = build_strategy(LearnConfig(strategy=StrategyName.FEDADAM, noise_multiplier=0.0), init, rec)
    assert isinstance(adam.inner, FedAdam)
