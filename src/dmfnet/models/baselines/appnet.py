"""App-Net baseline: Wang, Gu, Lu, Yang, Tang, "App-Net: A Hybrid Neural Network for
Encrypted Mobile Traffic Classification", IEEE INFOCOM Workshops 2020.

Two branches, fused late by concatenation, then a fully connected softmax classifier:

* the flow's packet-length sequence, signed by direction, as tokens: embedding, then a
  bidirectional LSTM; the final hidden states of both directions are the branch output;
* the first packet's bytes: byte embedding, then a 1-D CNN, max-pooled over positions.

Choices the paper leaves open, settled here:

* lengths: the dataset's first 30 IP lengths (``lengths``) times ``directions``; a token
  per signed length: |length| ≤ 1500 maps to itself, longer ones (loopback and offloaded
  captures carry up to 65535) to 1500 + ceil((|length| − 1500) / 256), so the vocabulary
  stays 2 × 1752 + 1 tokens; padding (direction 0) is token 0. Embedding 64, bi-LSTM
  hidden 64, one layer;
* first packet: the first 1014 bytes of ``flow_head`` (IP header on, anonymised) masked
  beyond the first packet's IP length, so later packets do not leak in; byte embedding
  dim 16 (token 0 doubles as padding byte 0x00 — an unavoidable ambiguity of zero-padded
  captures); two conv layers (kernel 5, 32 and 64 channels, max-pool 3) and a global
  max-pool. Widths are kept modest because the paper gives none and the CNN over 1014
  positions dominates the cost (64/128 channels ran at ~370 flows/s on one CPU core);
* fusion: concat(128 + 64) → FC 256 → ReLU → dropout 0.3 → classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dmfnet.flows.schema import M_PACKETS
from dmfnet.models.config import check_types, fraction, positive, positive_items
from dmfnet.models.registry import register_model


@dataclass
class AppNetConfig:
    num_classes: int = 2
    packets: int = M_PACKETS  # the first 30 of the dataset's per-packet columns
    exact_lengths: int = 1500  # |lengths| up to the Ethernet MTU get their own token
    coarse_step: int = 256  # larger lengths share a token per 256 bytes
    length_embedding: int = 64
    lstm_hidden: int = 64
    lstm_layers: int = 1
    first_packet_bytes: int = 1014
    byte_embedding: int = 16
    conv_channels: tuple[int, ...] = (32, 64)
    conv_kernel: int = 5
    conv_pool: int = 3
    hidden: int = 256
    dropout: float = 0.3

    def __post_init__(self) -> None:
        check_types(self)  # lists from JSON become tuples
        positive(self, "num_classes", "packets", "exact_lengths", "coarse_step")
        positive(self, "length_embedding")
        positive(self, "lstm_hidden", "lstm_layers", "first_packet_bytes", "byte_embedding")
        positive(self, "conv_kernel", "conv_pool", "hidden")
        positive_items(self, "conv_channels")
        fraction(self, "dropout")


class AppNet(nn.Module):
    """bi-LSTM over signed packet lengths ‖ 1-D CNN over the first packet's bytes."""

    def __init__(self, config: AppNetConfig) -> None:
        super().__init__()
        self.config = config
        self.max_token = config.exact_lengths + -(
            -(65535 - config.exact_lengths) // config.coarse_step
        )
        self.length_embedding = nn.Embedding(2 * self.max_token + 1, config.length_embedding)
        self.lstm = nn.LSTM(
            config.length_embedding,
            config.lstm_hidden,
            num_layers=config.lstm_layers,
            batch_first=True,
            bidirectional=True,
        )
        self.byte_embedding = nn.Embedding(256, config.byte_embedding)
        layers: list[nn.Module] = []
        c_in = config.byte_embedding
        for c_out in config.conv_channels:
            layers += [
                nn.Conv1d(c_in, c_out, config.conv_kernel, padding=config.conv_kernel // 2),
                nn.ReLU(),
                nn.MaxPool1d(config.conv_pool, config.conv_pool),
            ]
            c_in = c_out
        self.cnn = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(2 * config.lstm_hidden + c_in, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def length_tokens(self, lengths: Tensor, directions: Tensor) -> Tensor:
        """Signed length -> token in [0, 2 · max_token]; padding (direction 0) -> 0."""
        size = lengths.long().abs()
        exact = self.config.exact_lengths
        coarse = exact + (size - exact + self.config.coarse_step - 1) // self.config.coarse_step
        magnitude = torch.where(size <= exact, size, coarse).clamp(max=self.max_token)
        sign = directions.long().sign()
        # c2s: 1..max, s2c: max+1..2max, a zero-length packet of either direction -> 0.
        return torch.where(sign < 0, magnitude + self.max_token, magnitude) * (sign != 0)

    def first_packet(self, flow_head: Tensor, lengths: Tensor) -> Tensor:
        """The first packet's bytes from ``flow_head``, zero beyond its IP length, (B, 1014)."""
        n = self.config.first_packet_bytes
        head = flow_head[:, :n].long()
        if head.shape[1] < n:
            head = nn.functional.pad(head, (0, n - head.shape[1]))
        position = torch.arange(n, device=head.device)
        inside = position[None, :] < lengths[:, :1].long().abs()
        return head * inside

    def forward(self, lengths: Tensor, directions: Tensor, flow_head: Tensor) -> Tensor:
        m = self.config.packets
        tokens = self.length_tokens(lengths[:, :m], directions[:, :m])  # (B, M)
        _, (h, _) = self.lstm(self.length_embedding(tokens))  # h: (layers·2, B, H)
        length_rep = torch.cat([h[-2], h[-1]], dim=1)  # (B, 2H): both directions' last state
        x = self.byte_embedding(self.first_packet(flow_head, lengths)).transpose(1, 2)  # (B, E, L)
        byte_rep = self.cnn(x).amax(dim=-1)  # (B, C)
        return self.classifier(torch.cat([length_rep, byte_rep], dim=1))  # (B, classes)


@register_model(
    "appnet",
    inputs=("lengths", "directions", "flow_head"),
    group="multimodal",
    description="App-Net: bi-LSTM over signed packet lengths + 1D CNN over the first "
    "packet's bytes, late fusion (Wang et al., INFOCOM WKSHPS 2020)",
    config=AppNetConfig,
)
def appnet(num_classes: int, **config) -> AppNet:
    return AppNet(AppNetConfig(num_classes=num_classes, **config))
