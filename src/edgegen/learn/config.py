"""The options of one federated run, and their round trip through Flower's run config.

``LearnConfig`` is the single place each default lives: the CLI maps its flags onto it, the
Deployment-Engine wrapper writes it into the app's ``[tool.flwr.app.config]`` (kebab-case keys, TOML
values), and the ServerApp and ClientApp read it back from ``context.run_config``. ``check()`` refuses
combinations that cannot work together (``LearnConfigError``). Per-device facts (where its text
is, an injected fault for the robustness tests) are SuperNode ``--node-config`` values, not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any

from edgegen.errors import LearnConfigError
from edgegen.learn.lora import LoraSpec
from edgegen.learn.privacy import DpConfig
from edgegen.learn.robust import RobustRule

__all__ = ["LearnConfig", "StrategyName"]


class StrategyName(str, Enum):
    FEDAVG = "fedavg"
    FEDPROX = "fedprox"  # Li et al. 2020, arXiv:1812.06127: clients add mu/2 ||w - w_global||^2
    FEDADAM = "fedadam"  # Reddi et al. 2021, arXiv:2003.00295: Adam on the server over the mean update


@dataclass(frozen=True)
class LearnConfig:
    model: str = ""  # the base GGUF path, the same file on the server and on every device
    out_dir: str = ""  # where the ServerApp writes result.json and global.npz
    rounds: int = 3
    min_clients: int = 2
    local_steps: int = 20
    local_seconds: float = 120.0
    lr: float = 3e-3
    seq: int = 64
    eval_chunks: int = 8
    rank: int = 8
    alpha: float = 16.0
    targets: str = "attn_q,attn_v"
    train_a: bool = False
    lora_seed: int = 0
    strategy: StrategyName = StrategyName.FEDAVG
    proximal_mu: float = 0.01
    server_lr: float = 0.01  # FedAdam's eta
    secagg: bool = True
    secagg_shares: int = 3  # SecAgg+ needs more than 2; capped at the number of clients
    secagg_threshold: int = 2
    noise_multiplier: float = DpConfig.noise_multiplier
    clipping_norm: float = DpConfig.clipping_norm
    delta: float = DpConfig.delta
    robust: RobustRule = RobustRule.NONE
    robust_clip: float = 1.0
    trim_beta: float = 0.2
    round_timeout: float = 600.0  # a device that has not answered by then is dropped from the round
    audit: bool = False  # the server also saves every update its strategy is handed (tests of SecAgg+)

    @property
    def lora(self) -> LoraSpec:
        targets = tuple(t.strip() for t in self.targets.split(",") if t.strip())
        return LoraSpec(rank=self.rank, alpha=self.alpha, targets=targets, train_a=self.train_a, seed=self.lora_seed)

    @property
    def dp(self) -> DpConfig:
        return DpConfig(noise_multiplier=self.noise_multiplier, clipping_norm=self.clipping_norm, delta=self.delta)

    def check(self) -> LearnConfig:
        if self.robust is not RobustRule.NONE and self.secagg:
            raise LearnConfigError(
                f"--robust {self.robust.value} needs each device's update, which SecAgg+ hides from the server: "
                "turn SecAgg+ off (--no-secagg) to use a robust rule, or keep SecAgg+ with the plain mean")
        if self.robust is not RobustRule.NONE and self.strategy is not StrategyName.FEDAVG:
            raise LearnConfigError("a robust rule replaces FedAvg's mean; it does not combine with "
                                   f"{self.strategy.value}")
        if self.secagg and self.min_clients < 3:
            raise LearnConfigError("SecAgg+ needs at least 3 devices per round (Flower's SecAgg+ needs more than "
                                   "2 shares); use --min-clients 3 or --no-secagg")
        if self.rounds < 1 or self.local_steps < 1 or self.rank < 1:
            raise LearnConfigError("rounds, local steps and rank must be at least 1")
        if self.noise_multiplier < 0 or self.clipping_norm <= 0:
            raise LearnConfigError("the noise multiplier must be >= 0 and the clipping norm > 0")
        return self

    def to_run_config(self) -> dict[str, Any]:
        """Kebab-case keys and TOML-able values for ``[tool.flwr.app.config]``."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k.replace("_", "-")] = v.value if isinstance(v, Enum) else v
        return out

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> LearnConfig:
        kw: dict[str, Any] = {}
        for f in fields(cls):
            key = f.name.replace("_", "-")
            if key not in run_config:
                continue
            v = run_config[key]
            default = getattr(cls, f.name)
            if isinstance(default, Enum):
                v = type(default)(v)
            elif isinstance(default, bool):
                v = bool(v)
            elif isinstance(default, float):
                v = float(v)
            elif isinstance(default, int):
                v = int(v)
            kw[f.name] = v
        return replace(cls(), **kw)
