"""1D CNN baseline: Wang, Zhu, Wang, Zeng, Yang, "End-to-end encrypted traffic classification
with one-dimensional convolution neural networks", IEEE ISI 2017.

The paper's best setting is the "session, All layers" representation: the first 784 bytes of
a bidirectional flow from the IP header on, read as grey levels (byte / 255), classified by
a 1-D CNN: conv (kernel 25, 32 filters) + max-pool, conv (kernel 25, 64 filters) + max-pool,
fully connected 1024, dropout, softmax.

Choices the paper leaves open, settled here:

* input: ``flow_head[:784]``, the dataset's concatenation of the flow's first packets from
  the IP header on, addresses/ports/SNI/certificates zeroed (SPEC §Pipeline 4) — the
  paper anonymised addresses too (it randomised them);
* "same" zero padding (the paper's Fig. 3 keeps the length through each convolution) and
  max-pool window 3, stride 3 (1-D reading of its pooling): 784 -> 261 -> 87 positions;
* ReLU after each layer (the paper does not name the activation; ReLU is LeNet-5 style
  CNNs' modern default); dropout 0.5 before the output layer (rate not given).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from dmfnet.models.blocks import scale_bytes
from dmfnet.models.config import check_types, fail, fraction, positive, positive_items
from dmfnet.models.registry import register_model


@dataclass
class CNN1DConfig:
    num_classes: int = 2
    input_bytes: int = 784  # 28 x 28 in the paper's image view
    channels: tuple[int, ...] = (32, 64)  # the paper's two convolution layers
    kernel: int = 25
    pool: int = 3
    hidden: int = 1024  # the paper's fully connected layer
    dropout: float = 0.5

    def __post_init__(self) -> None:
        check_types(self)  # lists from JSON become tuples
        positive(self, "num_classes", "input_bytes", "kernel", "pool", "hidden")
        positive_items(self, "channels")
        fraction(self, "dropout")
        if self.input_bytes // self.pool ** len(self.channels) < 1:
            raise fail(
                "input_bytes",
                f"at least pool^stages = {self.pool ** len(self.channels)}",
                self.input_bytes,
            )


class CNN1D(nn.Module):
    """Two conv + max-pool stages over the flow's first bytes, then FC 1024 and softmax."""

    def __init__(self, config: CNN1DConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        c_in, length = 1, config.input_bytes
        for c_out in config.channels:
            layers += [
                nn.Conv1d(c_in, c_out, config.kernel, padding="same"),
                nn.ReLU(),
                nn.MaxPool1d(config.pool, config.pool),
            ]
            c_in, length = c_out, length // config.pool
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * length, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, config.num_classes),
        )

    def forward(self, flow_head: Tensor) -> Tensor:
        x = scale_bytes(flow_head[:, : self.config.input_bytes]).unsqueeze(1)  # (B, 1, 784)
        if x.shape[-1] < self.config.input_bytes:  # narrower column: zero-pad like the dataset
            x = nn.functional.pad(x, (0, self.config.input_bytes - x.shape[-1]))
        return self.classifier(self.features(x))  # (B, classes)


@register_model(
    "cnn1d",
    inputs=("flow_head",),
    group="non-multimodal",
    description="1D CNN over the flow's first 784 bytes (Wang et al., ISI 2017)",
    config=CNN1DConfig,
)
def cnn1d(num_classes: int, **config) -> CNN1D:
    return CNN1D(CNN1DConfig(num_classes=num_classes, **config))
