"""Set-structured policies for the choice environments (sb3-contrib MaskablePPO).

The choices are a set: on ``Scheduling-v0`` the K candidate request slots (``items="requests"``, masked by
``request_mask``), on ``Routing-v0`` the R replica rows (``items="replicas"``, masked by their
``candidate`` column). One shared MLP encodes every item together with a summary of the cluster (backends
and global features); a masked mean and max over the encoded items form the context. Each item's logit is
a shared scorer applied to (its encoding, the context), so the policy is equivariant to item order and
works for any number of items; the value is an MLP on the context. The extractor returns ``[item scores,
context]``; :class:`SetPolicy` reads the scores as the action logits and the context for the value.
"""

from __future__ import annotations

import gymnasium as gym
import torch
from sb3_contrib.common.maskable.policies import MaskableMultiInputActorCriticPolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn


def mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class SetExtractor(BaseFeaturesExtractor):
    def __init__(self, observation_space: gym.spaces.Dict, hidden: int = 64, items: str = "requests") -> None:
        k, f = observation_space[items].shape
        nb, fb = observation_space["backends"].shape
        g = observation_space["global"].shape[0]
        self.slots, self.hidden, self.items = k, hidden, items
        super().__init__(observation_space, features_dim=k + 3 * hidden)
        self.cluster = mlp([nb * fb + g, hidden, hidden])
        self.encoder = mlp([f + hidden, hidden, hidden])
        self.scorer = mlp([4 * hidden, hidden, 1])

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        requests = obs[self.items]
        mask = obs["request_mask"].float() if self.items == "requests" else requests[..., 0]  # replicas: candidate
        batch, slots = requests.shape[:2]  # any number of slots: the trained K or every waiting request
        cluster = self.cluster(torch.cat([obs["backends"].reshape(batch, -1), obs["global"]], dim=1))
        encoded = self.encoder(torch.cat([requests, cluster[:, None].expand(-1, slots, -1)], dim=2))
        weight = mask[..., None]
        count = weight.sum(dim=1).clamp(min=1.0)
        mean = (encoded * weight).sum(dim=1) / count
        maxed = torch.where(weight > 0, encoded, torch.full_like(encoded, -1e4)).max(dim=1).values
        maxed = torch.where(mask.sum(dim=1, keepdim=True) > 0, maxed, torch.zeros_like(maxed))
        context = torch.cat([mean, maxed, cluster], dim=1)
        scores = self.scorer(torch.cat([encoded, context[:, None].expand(-1, slots, -1)], dim=2)).squeeze(2)
        return torch.cat([scores, context], dim=1)


class SlotLogits(nn.Module):
    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return latent[:, : self.slots]


class SetPolicy(MaskableMultiInputActorCriticPolicy):
    """MaskablePPO's multi-input policy with the set extractor's slot scores as action logits."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs.setdefault("features_extractor_class", SetExtractor)
        kwargs.setdefault("net_arch", {"pi": [], "vf": [64]})
        super().__init__(*args, **kwargs)

    def _build(self, lr_schedule) -> None:  # noqa: ANN001
        super()._build(lr_schedule)
        self.action_net = SlotLogits(self.features_extractor.slots)
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)
