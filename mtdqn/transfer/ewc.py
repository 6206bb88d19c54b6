"""Elastic weight consolidation: diagonal Fisher information of the source network on its own replay.

The Fisher is the empirical one of the source's TD loss: F_i = E[(d loss / d theta_i)^2] over transitions drawn
uniformly from the replay buffers saved in the source checkpoint (`fisher_samples` per source task, one-step
targets r + gamma (1 - terminated) max_a Q_target(s', a) from the source's own target network; double-Q when the
source used it; a PopArt source's loss in its per-task normalized units, as it trained). With
`fisher_batch_size=1` every squared gradient is a single transition's (Kirkpatrick et al. 2017); larger batches are
cheaper and underestimate F. `normalize=mean` divides F by its mean over all entries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtdqn.losses.ewc import ewc_penalty, normalize_fisher
from mtdqn.losses.td import td_target
from mtdqn.nets.multitask import MultiTaskQNetwork
from mtdqn.replay.buffer import restored_buffer
from mtdqn.transfer.config import EWCConfig
from mtdqn.transfer.loading import TARGET_PREFIX, LoadReport, SourceCheckpoint, build_net, popart_sigma_mu
from mtdqn.types import Batch

log = logging.getLogger("mtdqn")


class EWCPenalty:
    """A DQNModule regularizer: (lambda / 2) sum_i F_i (theta_i - theta*_i)^2 over the transferred parameters."""

    def __init__(self, params: Sequence[nn.Parameter], anchors: Sequence[Tensor], fisher: Sequence[Tensor],
                 lam: float) -> None:
        self.params, self.anchors, self.fisher, self.lam = list(params), list(anchors), list(fisher), lam

    def __call__(self) -> Tensor:
        if self.anchors and self.anchors[0].device != self.params[0].device:  # the model moved (GPU)
            self.anchors = [a.to(p.device) for a, p in zip(self.anchors, self.params, strict=True)]
            self.fisher = [f.to(p.device) for f, p in zip(self.fisher, self.params, strict=True)]
        return ewc_penalty(self.params, self.anchors, self.fisher, self.lam)


def _replay_tensors(state: dict, n: int, generator: torch.Generator) -> tuple[Tensor, ...]:
    """n one-step transitions drawn uniformly (with replacement) from one saved replay buffer, with observations as
    the source trained on them (a uint8 replay's grid dequantized, frame stacks rebuilt: read raw, an Atari source's
    frames were 255 times too large)."""
    buf = restored_buffer(state)
    buf.generator = generator
    b = Batch(*(field[0] for field in buf.sample(n)))  # one minibatch of n
    return b.obs.float(), b.actions.long(), b.rewards.float(), b.next_obs.float(), b.discounts == 0


def source_fisher(source: SourceCheckpoint, cfg: EWCConfig) -> dict[str, Tensor]:
    """Diagonal empirical Fisher of the source Q-network's TD loss on its saved replay, by source tensor name."""
    if source.config is None:
        raise ValueError(f"transfer.checkpoint={str(source.path)!r}: EWC needs the source run's config.yaml "
                         "(network architecture, gamma); set transfer.source_config")
    replays = source.replays()
    if not replays:
        raise ValueError(f"transfer.checkpoint={str(source.path)!r} holds no replay buffers (data module state "
                         "'replays'); EWC estimates the Fisher information on them")
    net, specs = build_net(source.config, "transfer.checkpoint")
    target, _ = build_net(source.config, "transfer.checkpoint")
    net.load_state_dict(source.net_state())
    target.load_state_dict(source.net_state(TARGET_PREFIX) or source.net_state())
    model_cfg = source.config.get("model") or {}
    gamma, double_q = float(source.config.get("gamma", 0.99)), bool(model_cfg.get("double_q", False))
    huber = model_cfg.get("loss", "huber") == "huber"
    multi = isinstance(net, MultiTaskQNetwork)
    popart = net.popart if multi else None  # PopArt: the source's TD loss is in its per-task normalized units
    names, params = zip(*[(n, p) for n, p in net.named_parameters() if p.requires_grad], strict=True)
    sums = [torch.zeros_like(p) for p in params]
    batches = 0
    generator = torch.Generator().manual_seed(cfg.seed)
    for task, state in enumerate(replays[: len(specs)]):
        obs, actions, rewards, next_obs, terminated = _replay_tensors(state, cfg.fisher_samples, generator)
        ids = torch.full((obs.shape[0],), task, dtype=torch.int64)
        if multi:
            obs, next_obs = (F.pad(x, (0, net.max_obs_dim - x.shape[-1])) for x in (obs, next_obs))

        def q(m: nn.Module, x: Tensor, i: Tensor) -> Tensor:
            return m(x, i) if multi else m(x)

        for start in range(0, obs.shape[0], cfg.fisher_batch_size):
            sl = slice(start, start + cfg.fisher_batch_size)
            with torch.no_grad():
                online_next = q(net, next_obs[sl], ids[sl]) if double_q else None
                y = td_target(rewards[sl], gamma * (~terminated[sl]).float(), q(target, next_obs[sl], ids[sl]),
                              online_next)
            if popart is not None:
                y = popart.normalize_targets(y, ids[sl])
                q_taken = net.normalized_q(obs[sl], ids[sl]).gather(-1, actions[sl, None]).squeeze(-1)
            else:
                q_taken = q(net, obs[sl], ids[sl]).gather(-1, actions[sl, None]).squeeze(-1)
            loss = F.smooth_l1_loss(q_taken, y) if huber else F.mse_loss(q_taken, y)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for s, g in zip(sums, grads, strict=True):
                if g is not None:
                    s.add_(g.square())
            batches += 1
    fisher = {n: s / max(batches, 1) for n, s in zip(names, sums, strict=True)}
    if popart is not None:  # the equivalent plain heads (SourceCheckpoint.transfer_state): W' = sigma W, so
        sigma, _ = popart_sigma_mu(source.net_state())  # d loss / d W' = (d loss / d W) / sigma
        for k, spec in enumerate(specs):
            n = spec.n_actions
            fisher[f"heads.{k}.weight"] = fisher["popart.weight"][k, :n] / sigma[k].square()
            fisher[f"heads.{k}.bias"] = fisher["popart.bias"][k, :n] / sigma[k].square()
    return fisher


def ewc_regularizer(q_net: nn.Module, source: SourceCheckpoint, report: LoadReport, cfg: EWCConfig) -> EWCPenalty:
    """The EWC penalty on every parameter `report` loaded from the source, anchored at its source value."""
    t0 = time.perf_counter()
    fisher_src = source_fisher(source, cfg)
    state = source.transfer_state()
    params, anchors, fisher = [], [], []
    for name, p in q_net.named_parameters():
        src = report.loaded.get(name)
        if src is not None and src in fisher_src:
            params.append(p)
            anchors.append(state[src].detach().clone().to(p.device, p.dtype))
            fisher.append(fisher_src[src].to(p.device, p.dtype))
    if not params:
        raise ValueError("transfer.mode='ewc': no parameter of the target network was loaded from the source, "
                         "so there is nothing to keep near it")
    log.info("transfer: EWC on %d tensors (%d weights), Fisher from %d replay transitions per source task in %.1f s, "
             "mean %.3g before normalization", len(params), sum(p.numel() for p in params), cfg.fisher_samples,
             time.perf_counter() - t0, sum(float(f.sum()) for f in fisher) / max(sum(f.numel() for f in fisher), 1))
    return EWCPenalty(params, anchors, normalize_fisher(fisher, cfg.normalize), cfg.lam)
