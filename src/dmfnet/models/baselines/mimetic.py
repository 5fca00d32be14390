"""MIMETIC baseline: Aceto, Ciuonzo, Montieri, Pescapè, "MIMETIC: Mobile encrypted traffic
classification using multimodal deep learning", Computer Networks 165 (2019).

Two modalities, each with its own branch, fused late by concatenation:

* payload: the first 576 bytes of the flow's transport payloads, grey levels (/255),
  1-D CNN: conv (16 filters, kernel 25) + max-pool 3, conv (32, 25) + max-pool 3,
  dense 256;
* protocol fields of the first 20 packets: payload length, inter-arrival time,
  direction and TCP window, a bidirectional GRU (64 units), dense 256;
* shared part: concatenation → dense 128 → dropout → softmax.

Choices the paper leaves open, settled here:

* ``payload_head[:576]`` is the concatenation of the first packets' payloads with
  SNI and certificates zeroed (SPEC §Pipeline 4);
* field scaling to about [0, 1]: payload length log1p(bytes) / log1p(65535) (as DMF's
  lengths: a linear /65535 squeezes typical payloads into 0-0.02); inter-arrival time
  log1p(seconds) / log1p(3600); direction as the dataset stores it (+1/−1, 0 pad);
  TCP window / 65535 (unscaled field; 0 for UDP);
* "same" padding, ReLU, dropout 0.2 in the shared part; GRU final states of both
  directions concatenated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dmfnet.models.blocks import MAX_IP_LENGTH, scale_bytes, scale_lengths, scale_log
from dmfnet.models.config import check_types, fail, fraction, positive, positive_items
from dmfnet.models.registry import register_model


@dataclass
class MIMETICConfig:
    num_classes: int = 2
    payload_bytes: int = 576
    conv_channels: tuple[int, ...] = (16, 32)
    conv_kernel: int = 25
    conv_pool: int = 3
    packets: int = 20  # first packets whose protocol fields enter the GRU
    gru_hidden: int = 64
    branch_dense: int = 256
    shared_dense: int = 128
    dropout: float = 0.2
    max_iat: float = 3600.0  # seconds that map to 1.0 in the log scaling

    def __post_init__(self) -> None:
        check_types(self)  # lists from JSON become tuples
        positive(self, "num_classes", "payload_bytes", "conv_kernel", "conv_pool", "packets")
        positive(self, "gru_hidden", "branch_dense", "shared_dense", "max_iat")
        positive_items(self, "conv_channels")
        fraction(self, "dropout")
        if self.payload_bytes // self.conv_pool ** len(self.conv_channels) < 1:
            raise fail(
                "payload_bytes",
                f"at least conv_pool^stages = {self.conv_pool ** len(self.conv_channels)}",
                self.payload_bytes,
            )


class MIMETIC(nn.Module):
    """1-D CNN over payload bytes ‖ bi-GRU over per-packet fields, late fusion."""

    def __init__(self, config: MIMETICConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, length = 1, config.payload_bytes
        for c_out in config.conv_channels:
            layers += [
                nn.Conv1d(c_in, c_out, config.conv_kernel, padding="same"),
                nn.ReLU(),
                nn.MaxPool1d(config.conv_pool, config.conv_pool),
            ]
            c_in, length = c_out, length // config.conv_pool
        self.payload_branch = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(c_in * length, config.branch_dense), nn.ReLU()
        )
        self.gru = nn.GRU(4, config.gru_hidden, batch_first=True, bidirectional=True)
        self.fields_dense = nn.Sequential(
            nn.Linear(2 * config.gru_hidden, config.branch_dense), nn.ReLU()
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * config.branch_dense, config.shared_dense),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.shared_dense, config.num_classes),
        )

    def protocol_fields(
        self, payload_lengths: Tensor, iat: Tensor, directions: Tensor, tcp_windows: Tensor
    ) -> Tensor:
        """The four per-packet fields of the first ``packets`` packets, scaled: (B, P, 4)."""
        p = self.config.packets
        return torch.stack(
            [
                scale_log(payload_lengths[:, :p], MAX_IP_LENGTH),
                scale_log(iat[:, :p].clamp(min=0), self.config.max_iat),
                directions[:, :p].float(),
                scale_lengths(tcp_windows[:, :p]),
            ],
            dim=2,
        )

    def forward(
        self,
        payload_head: Tensor,
        payload_lengths: Tensor,
        iat: Tensor,
        directions: Tensor,
        tcp_windows: Tensor,
    ) -> Tensor:
        n = self.config.payload_bytes
        x = scale_bytes(payload_head[:, :n]).unsqueeze(1)  # (B, 1, 576)
        if x.shape[-1] < n:
            x = nn.functional.pad(x, (0, n - x.shape[-1]))
        payload_rep = self.payload_branch(x)  # (B, 256)
        fields = self.protocol_fields(payload_lengths, iat, directions, tcp_windows)  # (B, P, 4)
        _, h = self.gru(fields)  # (2, B, H)
        fields_rep = self.fields_dense(torch.cat([h[-2], h[-1]], dim=1))  # (B, 256)
        return self.classifier(torch.cat([payload_rep, fields_rep], dim=1))  # (B, classes)


@register_model(
    "mimetic",
    inputs=("payload_head", "payload_lengths", "iat", "directions", "tcp_windows"),
    group="multimodal",
    description="MIMETIC: 1D CNN over the first 576 payload bytes + bi-GRU over four "
    "per-packet fields, late fusion (Aceto et al., Computer Networks 2019)",
    config=MIMETICConfig,
)
def mimetic(num_classes: int, **config) -> MIMETIC:
    return MIMETIC(MIMETICConfig(num_classes=num_classes, **config))
