"""The Flower App: a ServerApp (control-plane side) and a ClientApp (each device), for LoRA fine-tuning.

    server   flwr ``ServerApp``: the round loop is Flower's ``DefaultWorkflow``; with SecAgg+ its fit
             step is Flower's ``SecAggPlusWorkflow`` (the strategy is handed only the unmasked sum);
             the strategy is FedAvg / FedProx / FedAdam (or a robust rule), wrapped in Flower's
             ``DifferentialPrivacyClientSideFixedClipping`` when the noise multiplier is > 0
    client   flwr ``ClientApp``: local LoRA training on the device's own text (``learn.lora``),
             evaluation of the global adapter against the base on its own held-out text

Both read a ``LearnConfig`` from the run config; a device's own facts come from its SuperNode's
``--node-config``: ``data-dir`` (its opted-in text), ``device`` (a name for reports), ``cache-dir``,
and, for robustness tests only, ``attack`` (scale10 | signflip), ``delay-s`` (a slow device) and
``crash-round`` (the ClientApp process dies inside that round's training). Every device weighs the
same in the mean (``num_examples = 1``): one device, one vote, and the DP noise calibration
(sensitivity = clipping norm) holds.

Client mods, outermost first: ``traffic`` (counts the payload bytes that leave the device per
round), SecAgg+ (``secaggplus_mod``, when the server runs SecAgg+), ``attack`` (a malicious device
poisons its update *after* honest clipping, as an attacker would), fixed clipping
(``fixedclipping_mod``, when the server runs DP). The ServerApp writes ``result.json`` and
``global.npz`` (the final factors, ``learn.lora`` order) to ``out_dir``. Nothing here starts processes.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from flwr.app.message_type import MessageType
from flwr.client import Client, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common.recorddict_compat import (
    arrayrecord_to_parameters,
    fitres_to_recorddict,
    recorddict_to_fitins,
    recorddict_to_fitres,
)
from flwr.server import LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, FedAdam, FedAvg, FedProx, Strategy
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from edgegen.learn.config import LearnConfig, StrategyName
from edgegen.learn.lora import initial_arrays
from edgegen.learn.privacy import epsilon
from edgegen.learn.robust import Attack, RobustFedAvg, RobustRule, norm, poison

__all__ = ["client", "server"]

STATE_TRAFFIC = "edgegen.traffic"
STATE_BASE = "edgegen.base"


# ---- server ----------------------------------------------------------------------------------------


class _Recorder:
    """Per-round, per-device metrics as Flower hands them to the strategy's aggregation hooks."""

    def __init__(self, out_dir: Path, audit: bool) -> None:
        self.out_dir, self.audit = out_dir, audit
        self.rounds: list[dict[str, Any]] = []
        self.fit: dict[int, list[dict[str, Any]]] = {}
        self.round = 0

    def fit_config(self, server_round: int) -> dict[str, Any]:
        self.round = server_round
        return {"round": server_round}

    def fit_metrics(self, metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        self.fit[self.round] = [dict(m) for _, m in metrics]
        return {}

    def evaluate_metrics(self, metrics: list[tuple[int, dict[str, Any]]]) -> dict[str, Any]:
        clients = sorted((dict(m) for _, m in metrics), key=lambda m: str(m.get("device", "")))
        self.rounds.append({"round": self.round, "fit": self.fit.get(self.round, []), "clients": clients})
        return {"ppl_mean": float(np.mean([c["ppl"] for c in clients]))} if clients else {}

    def audit_results(self, server_round: int, results: list[Any]) -> None:
        if not self.audit:
            return
        d = self.out_dir / "audit"
        d.mkdir(parents=True, exist_ok=True)
        for i, (_, fit_res) in enumerate(results):
            np.savez(d / f"round{server_round}-result{i}.npz", *parameters_to_ndarrays(fit_res.parameters))


class _Audited(Strategy):
    """Delegates to ``inner``; records what ``aggregate_fit`` is handed (the server's view of updates)."""

    def __init__(self, inner: Strategy, rec: _Recorder) -> None:
        self.inner, self.rec = inner, rec

    def initialize_parameters(self, client_manager: Any) -> Any:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self.rec.audit_results(server_round, results)
        return self.inner.aggregate_fit(server_round, results, failures)

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Any) -> Any:
        return self.inner.evaluate(server_round, parameters)


class _TimedGrid:
    """A Grid whose ``send_and_receive`` gives up after ``timeout`` s unless told otherwise: Flower's
    default fit/evaluate workflows wait for ever, so a slow or dead device would stall the round."""

    def __init__(self, grid: Grid, timeout: float) -> None:
        self._grid, self._timeout = grid, timeout

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        return self._grid.send_and_receive(messages, timeout=self._timeout if timeout is None else timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def build_strategy(cfg: LearnConfig, initial: list[np.ndarray], rec: _Recorder) -> Strategy:
    """The legacy Flower strategy for ``cfg``: every available device trains and evaluates each round."""
    n = cfg.min_clients
    common: dict[str, Any] = dict(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=n, min_evaluate_clients=n,
        min_available_clients=n, initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=rec.fit_config, on_evaluate_config_fn=lambda r: {"round": r},
        fit_metrics_aggregation_fn=rec.fit_metrics, evaluate_metrics_aggregation_fn=rec.evaluate_metrics,
        accept_failures=True)
    strategy: Strategy
    if cfg.robust is not RobustRule.NONE:
        strategy = RobustFedAvg(rule=cfg.robust, clip=cfg.robust_clip, beta=cfg.trim_beta, **common)
    elif cfg.strategy is StrategyName.FEDPROX:
        strategy = FedProx(proximal_mu=cfg.proximal_mu, **common)
    elif cfg.strategy is StrategyName.FEDADAM:
        strategy = FedAdam(eta=cfg.server_lr, eta_l=cfg.lr, **common)
    else:
        strategy = FedAvg(**common)
    strategy = _Audited(strategy, rec)
    if cfg.dp.enabled:
        strategy = DifferentialPrivacyClientSideFixedClipping(
            strategy, noise_multiplier=cfg.noise_multiplier, clipping_norm=cfg.clipping_norm, num_sampled_clients=n)
    return strategy


def run_server(grid: Grid, context: Context, cfg: LearnConfig) -> dict[str, Any]:
    """Run ``cfg.rounds`` rounds on ``grid`` and write the result to ``cfg.out_dir``."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    initial = initial_arrays(Path(cfg.model), cfg.lora)
    rec = _Recorder(out, cfg.audit)
    strategy = build_strategy(cfg, initial, rec)
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.rounds), strategy=strategy)
    fit_workflow = None
    if cfg.secagg:
        shares = min(cfg.secagg_shares, cfg.min_clients)
        # every device weighs 1 (max_weight 1: Flower's default of 1000 would scale each update down
        # 1000x before quantization and lose it to rounding); factors live well inside +-1, so that
        # range keeps a 2**22-level quantization step at 4.8e-7 (a device cannot push a coordinate past it)
        fit_workflow = SecAggPlusWorkflow(num_shares=shares, reconstruction_threshold=min(cfg.secagg_threshold, shares),
                                          max_weight=1.0, clipping_range=1.0, timeout=cfg.round_timeout)
    DefaultWorkflow(fit_workflow=fit_workflow)(_TimedGrid(grid, cfg.round_timeout), legacy)  # type: ignore[arg-type]
    final = parameters_to_ndarrays(_params_of(legacy))
    np.savez(out / "global.npz", *final)
    sent = sum(a.nbytes for a in initial)
    result = {
        "config": cfg.to_run_config(),
        "rounds": rec.rounds,
        "wall_s": round(time.monotonic() - t0, 2),
        "adapter_bytes": sent,
        "epsilon": epsilon(cfg.noise_multiplier, 1.0, cfg.rounds, cfg.delta) if cfg.dp.enabled else None,
        "delta": cfg.delta if cfg.dp.enabled else None,
    }
    tmp = out / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=1, default=float))
    os.replace(tmp, out / "result.json")
    return result


def _params_of(legacy: LegacyContext) -> Any:
    return arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)


server = ServerApp()


@server.main()
def _server_main(grid: Grid, context: Context) -> None:
    run_server(grid, context, LearnConfig.from_run_config(dict(context.run_config)).check())


# ---- client ----------------------------------------------------------------------------------------


class LoraClient(NumPyClient):
    """One device: its base model, its text, and the LoRA factors it trains."""

    def __init__(self, cfg: LearnConfig, node: dict[str, Any], context: Context) -> None:
        self.cfg, self.node, self.context = cfg, node, context
        self.device = str(node.get("device", "device"))
        self._model: Any = None
        self._text: Any = None

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            import torch

            from edgegen.learn.data import local_tokens
            from edgegen.learn.lora import LoraModel, load_base

            torch.set_num_threads(int(self.node.get("threads", 1)))
            cache = self.node.get("cache-dir")
            self._text = local_tokens(Path(str(self.node["data-dir"])), Path(self.cfg.model),
                                      cache_dir=Path(str(cache)) if cache else None)
            self._model = LoraModel(load_base(Path(self.cfg.model)), self.cfg.lora)
        return self._model, self._text

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        rnd = int(config.get("round", 0))
        if int(self.node.get("crash-round", -1)) == rnd:
            os._exit(17)  # a device that loses power mid-round: no reply, no clean shutdown
        delay = float(self.node.get("delay-s", 0.0))
        if delay > 0:
            time.sleep(delay)
        model, text = self._load()
        model.set_arrays(parameters)
        stats = model.train(text.train, steps=self.cfg.local_steps, seconds=self.cfg.local_seconds, seq=self.cfg.seq,
                            lr=self.cfg.lr, prox_mu=float(config.get("proximal_mu", 0.0)),
                            seed=zlib.crc32(f"{self.device}:{rnd}".encode()))
        new = model.arrays()
        audit = self.node.get("audit-dir")
        if audit:
            Path(str(audit)).mkdir(parents=True, exist_ok=True)
            np.savez(Path(str(audit)) / f"{self.device}-round{rnd}.npz", *new)
        # client drift: how far local training moved the factors from the global ones (L2, honest update)
        drift = norm([n - np.asarray(o, dtype=np.float32) for n, o in zip(new, parameters)])
        return new, 1, {"device": self.device, "steps": stats.steps, "loss_first": stats.loss_first,
                        "loss_last": stats.loss_last, "train_s": stats.seconds, "update_norm": drift}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        model, text = self._load()
        rnd = int(config.get("round", 0))
        base = self.context.state.metric_records.get(STATE_BASE)
        if base is None:
            model.set_arrays([np.zeros_like(a) for a in parameters])
            nll_b, n_b = model.nll(text.heldout, self.cfg.seq, self.cfg.eval_chunks)
            base = MetricRecord({"nll": nll_b, "n": n_b})
            self.context.state.metric_records[STATE_BASE] = base
        model.set_arrays(parameters)
        nll, n = model.nll(text.heldout, self.cfg.seq, self.cfg.eval_chunks)
        traffic = self.context.state.config_records.get(STATE_TRAFFIC, ConfigRecord({}))
        return nll / n, n, {"device": self.device, "ppl": float(np.exp(nll / n)),
                            "ppl_base": float(np.exp(float(base["nll"]) / int(base["n"]))), "n_tokens": n,
                            "up_bytes": int(traffic.get(str(rnd), 0))}


def _client_fn(context: Context) -> Client:
    cfg = LearnConfig.from_run_config(dict(context.run_config))
    return LoraClient(cfg, dict(context.node_config), context).to_client()


def _payload_bytes(msg: Message) -> int:
    """Bytes of the arrays and config values a reply carries (framing and metadata not counted)."""
    total = 0
    content = msg.content
    for rec in content.array_records.values():
        total += sum(len(arr.data) for arr in rec.values())
    for crec in content.config_records.values():
        for v in crec.values():
            vals = v if isinstance(v, list) else [v]
            total += sum(len(x) if isinstance(x, (bytes, str)) else 8 for x in vals)
    return total


def traffic_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Counts the payload bytes of every training reply leaving the device, per round (group id)."""
    out = call_next(msg, ctxt)
    if msg.metadata.message_type == MessageType.TRAIN and not out.has_error():
        rec = ctxt.state.config_records.get(STATE_TRAFFIC, ConfigRecord({}))
        key = str(msg.metadata.group_id)
        rec[key] = int(rec.get(key, 0)) + _payload_bytes(out)
        ctxt.state.config_records[STATE_TRAFFIC] = rec
    return out


def secagg_when_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; other messages pass through."""
    if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def attack_mod(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """A malicious device (``--node-config attack=...``): poisons its (already clipped) update."""
    attack = Attack(str(ctxt.node_config.get("attack", "none")))
    if attack is Attack.NONE or msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    old = parameters_to_ndarrays(recorddict_to_fitins(msg.content, keep_input=True).parameters)
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    fit_res = recorddict_to_fitres(out.content, keep_input=True)
    fit_res.parameters = ndarrays_to_parameters(poison(parameters_to_ndarrays(fit_res.parameters), old, attack))
    return Message(fitres_to_recorddict(fit_res, keep_input=True), reply_to=msg)


def clipping_when_asked(msg: Message, ctxt: Context, call_next: Any) -> Message:
    """Flower's ``fixedclipping_mod`` when the server's DP wrapper sent a clipping norm."""
    if msg.metadata.message_type == MessageType.TRAIN:
        if KEY_CLIPPING_NORM in recorddict_to_fitins(msg.content, keep_input=True).config:
            return fixedclipping_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


client = ClientApp(client_fn=_client_fn, mods=[traffic_mod, secagg_when_asked, attack_mod, clipping_when_asked])
