"""DMF: deep multimodal fusion of raw bytes and packet lengths (Wang et al., CMC 2025, §4).

Read top to bottom like the paper's Fig. 2:

1. two MLPs bring both modalities to the same width (§4.2, §5.1(5)):
   raw bytes 1600 → 512 → 256, packet lengths 30 → 128 → 256;
2. each 256-vector becomes a 1-channel sequence and enters a 1-D CNN branch; both branches
   have three stages with kernels 9, 7, 5 and strides 3, 2, 2 (multi-scale features, §4.2);
3. after EVERY stage one :class:`FusionBlock` (the TransFuser pattern in 1-D) pools both
   branches' maps to a few tokens, runs a Transformer encoder over the tokens of both
   modalities (eq. 1-6), interpolates the result back and adds it to each branch (§4.3);
4. late fusion: global average pooling gives Rep(bytes) and Rep(lengths), concatenated
   into a fully connected classifier (eq. 7), plus one head per modality (eq. 8-9);
5. loss: CE(fused) + α·CE(bytes) + β·CE(lengths) + γ·contrastive (eq. 8-11).

Feature-map lengths with the default configuration (padding = kernel // 2)::

    256 --conv k9 s3--> 86 --conv k7 s2--> 43 --conv k5 s2--> 22

No pooling layer follows the convolutions: the strides already shrink the map 11.6x, and a
further /2 pool per stage would leave 3 positions after stage 3, fewer than the fusion
tokens. Global average pooling at the end is the branch's pooling (§4.4).

The ablations of Tables 4-5 are the same class with another configuration:
``dmf-no-lengths`` / ``dmf-no-bytes`` keep one branch (its per-stage Transformer then
attends over that modality's own tokens, so the only thing removed is the other modality),
``dmf-late`` keeps both branches without fusion blocks (late fusion only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dmfnet.flows.schema import BYTES_LEN, M_PACKETS
from dmfnet.models.blocks import (
    MAX_IP_LENGTH,
    scale_bytes,
    scale_lengths,
    scale_log,
    scale_sqrt,
)
from dmfnet.models.config import (
    ConfigError,
    check_types,
    fail,
    fraction,
    non_negative,
    one_of,
    positive,
    positive_items,
)
from dmfnet.models.registry import register_model

MODALITIES = ("bytes", "lengths")
LENGTH_SCALINGS = ("sqrt", "log", "linear", "learned")
BYTE_SCALINGS = ("linear", "learned")
LENGTH_DIRECTIONS = ("none", "sign", "channel")
LENGTH_PACKETS = ("all", "payload")
BYTE_COLUMNS = ("bytes", "payload_packet_bytes")


@dataclass
class DMFConfig:
    num_classes: int = 2
    # Which modalities enter the model, in forward's argument order.
    modalities: tuple[str, ...] = MODALITIES
    # Transformer fusion after every CNN stage (False = late fusion only, Tables 4-5).
    deep_fusion: bool = True
    # Input widths (SPEC: N=5 packets x (80 header + 240 payload) bytes; M=30 lengths).
    bytes_len: int = BYTES_LEN
    lengths_len: int = M_PACKETS
    # MLP widths from §5.1(5): bytes 1600 -> 512 -> 256, lengths 30 -> 128 -> 256.
    bytes_hidden: int = 512
    lengths_hidden: int = 128
    embed_len: int = 256  # both MLPs end here: the 1-channel sequence each CNN branch reads
    mlp_dropout: float = 0.1  # light: the MLP inputs are already dense and anonymised
    # CNN stages (§5.1(5)): kernels 9, 7, 5 and strides 3, 2, 2. Channels are ours: 16/32/64
    # doubles as the map halves (about constant work per stage, as in most 1-D CNNs); the
    # paper says it kept these "relatively small" (§5.4). With 16/32/64 one CPU core scores
    # ~7.4 k flows per CPU second (batch 1024, benchmarks/models_speed.py); 32/64/128 was
    # ~2.6x slower. The 1600x512 byte MLP holds most of the ~1.1 M parameters either way.
    channels: tuple[int, ...] = (16, 32, 64)
    kernels: tuple[int, ...] = (9, 7, 5)
    strides: tuple[int, ...] = (3, 2, 2)
    # Fusion (§4.3, TransFuser): each branch is average-pooled to `fusion_tokens` anchors;
    # 8 keeps the 22-position last map above the anchor count (no upsampling into the
    # Transformer) while attention over 16 tokens stays cheap.
    fusion_tokens: int = 8
    fusion_dim: int | None = None  # d_model; None = the stage's channel count (TransFuser)
    fusion_heads: int = 2  # 16/32/64 channels -> head sizes 8/16/32
    fusion_layers: int = 1  # one encoder layer per stage: three in the model in total
    fusion_ffn_mult: int = 4  # FFN hidden width = 4 x d_model, the Transformer default
    # No dropout inside the fusion Transformer: its random masks took 17% of a CPU training
    # step; the MLP and head dropouts regularise the model.
    fusion_dropout: float = 0.0
    head_dropout: float = 0.2
    # Loss (eq. 11, plus the fused head's CE the paper omits; SPEC §Model).
    alpha: float = 1.0  # weight of CE(byte head), eq. 8
    beta: float = 1.0  # weight of CE(length head), eq. 9
    gamma: float = 1.0  # weight of the contrastive fusion loss, eq. 10
    margin: float = 1.0  # m in eq. 10, on squared distance; unit vectors have D^2 in [0, 4]
    projection_dim: int = 64  # space where eq. 10 compares the two modalities
    # How lengths become numbers: "learned" (the default: one learned number per length,
    # 1..1500 exactly and longer ones per 256 bytes, initialised to "sqrt"), "sqrt"
    # (sqrt(|length| / 1500): 583 vs 590 bytes land 0.004 apart), "log"
    # (log1p(|length|) / log1p(65535): 0.001 apart) or "linear" (|length| / 65535, the IP
    # maximum: 0.0001 apart, which the first Linear layer barely sees). dmf-paper keeps
    # "sqrt". Defaults chosen on validation splits: docs/model-study.md.
    length_scaling: str = "learned"
    # Direction of each packet in the length modality, from the ``directions`` column:
    # "none" (the paper: plain lengths), "sign" (+ client->server, - server->client, applied
    # after the scaling so that it survives it) or "channel" (a second 30-value input).
    length_direction: str = "sign"
    # Which packets the length sequence lists: "all" (the paper: the first lengths_len
    # packets) or only those that carry payload ("payload", the default, from the
    # ``payload_lengths`` column: the first lengths_len of them among the packets the dataset
    # recorded, 60 by default). Pure ACKs sit between data packets at positions that vary
    # with timing, shifting everything after, and a TCP flow's first 30 packets may hold
    # only its handshake and key exchange.
    length_packets: str = "payload"
    # Dataset column of the raw-byte modality: "bytes" (the first N packets, the paper) or
    # "payload_packet_bytes" (the first N packets that carry payload; same layout).
    byte_column: str = "payload_packet_bytes"
    # How a byte value becomes the MLP's input: "linear" (value / 255, the paper) or
    # "learned" (one learned number per byte value, initialised to value / 255). Likewise
    # length_scaling "learned": one learned number per length (1..1500 exactly, longer ones
    # per 256 bytes), initialised to the "sqrt" scaling. The MLP widths do not change; what
    # changes is that a value the classes hinge on (a protocol's type byte, a message's
    # exact length) can be moved away from its numeric neighbours.
    byte_scaling: str = "learned"
    # Training only: label smoothing of every cross-entropy term, and the share of byte
    # positions zeroed at random in each training flow (augmentation; 0 = off). Masking a
    # tenth of the bytes lowered DMF's spread over seeds on validation splits (1.76 -> 1.31
    # points, mean 91.79 -> 91.90; docs/model-study.md, round 3); dmf-paper keeps 0.
    label_smoothing: float = 0.0
    byte_mask: float = 0.1

    def __post_init__(self) -> None:
        # Configurations read back from JSON carry lists; keep tuples so configs compare equal.
        # check_types does that, after checking every value's type.
        check_types(self)
        _check_values(self)


def _check_values(c: DMFConfig) -> None:
    """Ranges and choices of a DMF configuration: a bad value names its key (ConfigError)."""
    positive(c, "num_classes", "bytes_len", "lengths_len", "bytes_hidden", "lengths_hidden")
    positive(c, "embed_len", "fusion_tokens", "fusion_dim", "fusion_heads", "fusion_layers")
    positive(c, "fusion_ffn_mult", "projection_dim")
    fraction(c, "mlp_dropout", "fusion_dropout", "head_dropout", "label_smoothing", "byte_mask")
    non_negative(c, "alpha", "beta", "gamma", "margin")
    positive_items(c, "channels", "kernels", "strides")
    if not len(c.channels) == len(c.kernels) == len(c.strides):
        raise ConfigError(
            "channels",
            "channels, kernels and strides must have one entry per stage, got "
            f"{list(c.channels)}, {list(c.kernels)} and {list(c.strides)}",
        )
    if not c.modalities or len(set(c.modalities)) != len(c.modalities):
        raise fail("modalities", f"one or both of {', '.join(MODALITIES)}", c.modalities)
    for m in c.modalities:
        if m not in MODALITIES:
            raise fail("modalities", f"one or both of {', '.join(MODALITIES)}", c.modalities)
    one_of(c, "length_scaling", LENGTH_SCALINGS)
    one_of(c, "length_direction", LENGTH_DIRECTIONS)
    one_of(c, "length_packets", LENGTH_PACKETS)
    one_of(c, "byte_column", BYTE_COLUMNS)
    one_of(c, "byte_scaling", BYTE_SCALINGS)
    if c.deep_fusion:  # each stage's Transformer splits its width over the heads
        widths = [c.fusion_dim] if c.fusion_dim is not None else list(c.channels)
        if any(w % c.fusion_heads for w in widths):
            key = "fusion_dim" if c.fusion_dim is not None else "channels"
            raise ConfigError(
                key,
                f"{key} must be divisible by fusion_heads ({c.fusion_heads}), "
                f"got {widths if key == 'channels' else c.fusion_dim}",
            )


# --------------------------------------------------------------------------------------
# 1. Modality MLPs (§4.2): both modalities to the same width.


class ModalityMLP(nn.Module):
    """Two-layer MLP mapping one modality to ``embed_len`` values (§5.1(5)).

    No activation after the second layer: the CNN's first conv + BatchNorm follows, and a
    ReLU here would zero about half of the sequence before the CNN sees it.
    """

    def __init__(self, in_len: int, hidden: int, out_len: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_len, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_len),
        )

    def forward(self, x: Tensor) -> Tensor:  # (B, in_len) -> (B, out_len)
        return self.net(x)


# --------------------------------------------------------------------------------------
# 2. CNN stage (§4.2): conv + BatchNorm + ReLU. Both branches are lists of these.


class ConvStage(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: Tensor) -> Tensor:  # (B, C_in, L) -> (B, C_out, L')
        return F.relu(self.norm(self.conv(x)))


# --------------------------------------------------------------------------------------
# 3. Fusion block (§4.3): a Transformer layer (eq. 1-6), then one fusion class, one
#    instance per stage.


class TransformerLayer(nn.Module):
    """Multi-head self-attention (eq. 1-5), residual + LayerNorm and FFN (eq. 6), post-norm.

    Written out rather than ``nn.TransformerEncoderLayer`` so that it reads like the
    equations; a test checks it against that class.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, 3 * d_model)  # eq. 1: W^Q, W^K, W^V side by side
        self.w_out = nn.Linear(d_model, d_model)  # eq. 5: W^out
        self.norm_attention = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, ffn_mult * d_model),
            nn.GELU(),
            nn.Linear(ffn_mult * d_model, d_model),
            nn.Dropout(dropout),
        )
        self.norm_ffn = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:  # (B, S, d) -> (B, S, d)
        B, S, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(x).split(d, dim=2)  # eq. 1, each (B, S, d)
        q, k, v = (t.view(B, S, h, d // h).transpose(1, 2) for t in (q, k, v))  # (B, h, S, d/h)
        # Eq. 2-4: softmax(Q K^T / sqrt(d_k)) V, per head.
        p = self.dropout if self.training else 0.0
        heads = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, S, d/h)
        attended = self.w_out(heads.transpose(1, 2).reshape(B, S, d))  # eq. 5: concat, W^out
        x = self.norm_attention(x + attended)  # eq. 6: LayerNorm(X + M_multihead)
        # Eq. 6's FFN, with the residual + LayerNorm the original Transformer puts after it.
        return self.norm_ffn(x + self.ffn(x))


class FusionBlock(nn.Module):
    """Pool every branch to tokens, self-attend over all of them, add back (TransFuser, 1-D).

    Works for one or more branches: with one branch it is plain self-attention over that
    modality's tokens (used by the unimodal ablations).
    """

    def __init__(
        self,
        channels: int,
        n_branches: int,
        n_tokens: int,
        d_model: int | None,
        n_heads: int,
        n_layers: int,
        ffn_mult: int,
        dropout: float,
    ) -> None:
        super().__init__()
        d = d_model or channels
        self.n_tokens = n_tokens
        self.proj_in = nn.Identity() if d == channels else nn.Linear(channels, d)
        self.proj_out = nn.Identity() if d == channels else nn.Linear(d, channels)
        # Learned position of each anchor within its branch, and which modality it came from.
        self.pos_emb = nn.Parameter(torch.zeros(1, n_tokens, d))
        self.modality_emb = nn.Parameter(torch.zeros(n_branches, 1, d))
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.modality_emb, std=0.02)
        self.encoder = nn.Sequential(
            *(TransformerLayer(d, n_heads, ffn_mult, dropout) for _ in range(n_layers))
        )

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        tokens = []
        for i, x in enumerate(maps):  # x: (B, C, L_i)
            t = x @ average_pooling(x.shape[-1], self.n_tokens, x)  # (B, C, T)
            t = self.proj_in(t.transpose(1, 2))  # (B, T, d)
            tokens.append(t + self.pos_emb + self.modality_emb[i])
        fused = self.encoder(torch.cat(tokens, dim=1))  # (B, n_branches * T, d)
        out = []
        for x, t in zip(maps, fused.split(self.n_tokens, dim=1), strict=True):
            t = self.proj_out(t).transpose(1, 2)  # (B, C, T)
            t = t @ linear_upsampling(self.n_tokens, x.shape[-1], t)  # (B, C, L_i)
            out.append(x + t)  # element-wise sum back into the branch (§4.3)
        return out


# Pooling to anchors and interpolating back are linear maps along the sequence, applied
# here as matrix products: PyTorch's CUDA ``upsample_linear1d`` kernel took 94% of DMF's
# inference time on an H200 (batch 8192), and on CPU ``adaptive_avg_pool1d`` over lengths
# that the anchor count does not divide (43, 22 -> 8) ran 7x slower than the product.


def average_pooling(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """``(n_in, n_out)`` matrix ``P`` with ``x @ P == F.adaptive_avg_pool1d(x, n_out)``.

    Map lengths are fixed by the configuration: ``int`` makes a traced graph (the ONNX
    export) hold ``P`` as a constant instead of rebuilding it from the input's shape.
    """
    eye = torch.eye(int(n_in), dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, n, n)
    return F.adaptive_avg_pool1d(eye, int(n_out))[0]


def linear_upsampling(n_in: int, n_out: int, like: Tensor) -> Tensor:
    """``(n_in, n_out)`` matrix ``W`` with ``x @ W == F.interpolate(x, n_out, mode="linear")``
    (``int``: a constant in a traced graph, as in :func:`average_pooling`)."""
    eye = torch.eye(int(n_in), dtype=like.dtype, device=like.device).unsqueeze(0)  # (1, n, n)
    return F.interpolate(eye, size=int(n_out), mode="linear", align_corners=False)[0]


# --------------------------------------------------------------------------------------
# 4. The model.


@dataclass
class DMFOutput:
    """Everything the loss and an analyst need from one forward pass."""

    logits: Tensor  # (B, classes): fused head, eq. 7 (the prediction)
    byte_logits: Tensor | None  # (B, classes): byte head, eq. 8; None without bytes
    length_logits: Tensor | None  # (B, classes): length head, eq. 9; None without lengths
    byte_rep: Tensor | None  # (B, C3): Rep(bytes) after deep fusion
    length_rep: Tensor | None  # (B, C3): Rep(lengths) after deep fusion


class DMF(nn.Module):
    """DMF (§4): modality MLPs, two CNN branches fused after every stage, late fusion."""

    def __init__(self, config: DMFConfig) -> None:
        super().__init__()
        for m in config.modalities:
            if m not in MODALITIES:
                raise ValueError(f"unknown modality {m!r}; DMF knows {MODALITIES}")
        if not config.modalities:
            raise ValueError("DMF needs at least one modality")
        if not len(config.channels) == len(config.kernels) == len(config.strides):
            raise ValueError("channels, kernels and strides must have one entry per stage")
        if config.length_scaling not in LENGTH_SCALINGS:
            raise ValueError(
                f"length_scaling must be one of {', '.join(LENGTH_SCALINGS)}, "
                f"not {config.length_scaling!r}"
            )
        if config.length_direction not in LENGTH_DIRECTIONS:
            raise ValueError(
                f"length_direction must be one of {', '.join(LENGTH_DIRECTIONS)}, "
                f"not {config.length_direction!r}"
            )
        if config.length_packets not in LENGTH_PACKETS:
            raise ValueError(
                f"length_packets must be one of {', '.join(LENGTH_PACKETS)}, "
                f"not {config.length_packets!r}"
            )
        if config.byte_column not in BYTE_COLUMNS:
            raise ValueError(
                f"byte_column must be one of {', '.join(BYTE_COLUMNS)}, not {config.byte_column!r}"
            )
        for name in ("label_smoothing", "byte_mask"):
            if not 0.0 <= getattr(config, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(config, name)!r}")
        self.config = config
        n_branches = len(config.modalities)
        lengths_in = config.lengths_len * (2 if config.length_direction == "channel" else 1)
        in_len = {"bytes": config.bytes_len, "lengths": lengths_in}
        hidden = {"bytes": config.bytes_hidden, "lengths": config.lengths_hidden}

        if config.byte_scaling == "learned" and "bytes" in config.modalities:
            self.byte_values = nn.Parameter(torch.arange(256, dtype=torch.float32) / 255.0)
        if config.length_scaling == "learned" and "lengths" in config.modalities:
            sizes = torch.cat(
                [
                    torch.arange(LEARNED_EXACT + 1, dtype=torch.float32),
                    LEARNED_EXACT + LEARNED_STEP * torch.arange(1, _coarse_tokens() + 1),
                ]
            )
            self.length_values = nn.Parameter(scale_sqrt(sizes))  # (tokens,)
        self.mlps = nn.ModuleDict(
            {
                m: ModalityMLP(in_len[m], hidden[m], config.embed_len, config.mlp_dropout)
                for m in config.modalities
            }
        )
        c_in = (1, *config.channels[:-1])
        self.branches = nn.ModuleDict(
            {
                m: nn.ModuleList(
                    ConvStage(ci, co, k, s)
                    for ci, co, k, s in zip(
                        c_in, config.channels, config.kernels, config.strides, strict=True
                    )
                )
                for m in config.modalities
            }
        )
        self.fusions = nn.ModuleList(
            FusionBlock(
                c,
                n_branches,
                config.fusion_tokens,
                config.fusion_dim,
                config.fusion_heads,
                config.fusion_layers,
                config.fusion_ffn_mult,
                config.fusion_dropout,
            )
            for c in (config.channels if config.deep_fusion else ())
        )
        c_rep = config.channels[-1]
        self.dropout = nn.Dropout(config.head_dropout)
        self.head = nn.Linear(n_branches * c_rep, config.num_classes)  # eq. 7
        if n_branches > 1:
            self.modality_heads = nn.ModuleDict(
                {m: nn.Linear(c_rep, config.num_classes) for m in config.modalities}
            )
            self.projections = nn.ModuleDict(
                {m: nn.Linear(c_rep, config.projection_dim) for m in config.modalities}
            )

    @property
    def inputs(self) -> tuple[str, ...]:
        """Dataset columns ``forward`` reads, in order (they follow the configuration)."""
        return model_inputs(self.config)

    def scale(self, modality: str, x: Tensor, directions: Tensor | None = None) -> Tensor:
        """Raw column values -> floats (bytes / 255, lengths as ``length_scaling`` says,
        with the direction as ``length_direction`` says)."""
        if modality == "bytes":
            if self.config.byte_scaling == "learned":
                return self.byte_values[x.long()]  # (B, L): one learned number per value
            return scale_bytes(x)
        c = self.config
        if c.length_scaling == "learned":
            size = x.long().abs()
            coarse = LEARNED_EXACT + (size - LEARNED_EXACT + LEARNED_STEP - 1) // LEARNED_STEP
            token = torch.where(size <= LEARNED_EXACT, size, coarse)
            scaled = self.length_values[token.clamp(max=len(self.length_values) - 1)]
            scaled = scaled * (size > 0)  # padding stays 0
        elif c.length_scaling == "sqrt":
            scaled = scale_sqrt(x)
        elif c.length_scaling == "log":
            scaled = scale_log(x, MAX_IP_LENGTH)
        else:
            scaled = scale_lengths(x)
        if c.length_direction == "sign":
            return scaled * directions.sign().to(scaled.dtype)  # (B, M), padding stays 0
        if c.length_direction == "channel":
            return torch.cat([scaled, directions.to(scaled.dtype)], dim=1)  # (B, 2M)
        return scaled

    def length_packets(self, columns: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        """The raw lengths (and directions) the length modality reads, ``(B, lengths_len)``
        each, from the dataset columns: the first packets, or those that carry payload
        (``length_packets``), cut or zero-padded to ``lengths_len``."""
        lengths, directions = columns["lengths"], columns.get("directions")
        width = self.config.lengths_len
        if self.config.length_packets == "payload":
            return payload_packets_first(lengths, directions, columns["payload_lengths"], width)
        return fit_width(lengths, width), (
            fit_width(directions, width) if directions is not None else None
        )

    def forward(self, *inputs: Tensor) -> DMFOutput:
        """``inputs`` are the raw columns named by :attr:`inputs`, in that order."""
        names = self.inputs
        if len(inputs) != len(names):
            raise ValueError(f"DMF expects {len(names)} inputs {names}, got {len(inputs)}")
        columns = dict(zip(names, inputs, strict=True))
        mods = self.config.modalities
        raw = {"bytes": columns.get(self.config.byte_column), "lengths": None}
        directions = None
        if "lengths" in mods:
            raw["lengths"], directions = self.length_packets(columns)
        scaled = {m: self.scale(m, raw[m], directions) for m in mods}
        if self.training and self.config.byte_mask and "bytes" in scaled:
            keep = torch.rand_like(scaled["bytes"]) >= self.config.byte_mask
            scaled["bytes"] = scaled["bytes"] * keep  # byte masking: zeroed positions
        # MLPs, then one channel per branch.
        maps = [self.mlps[m](scaled[m]).unsqueeze(1) for m in mods]  # (B, 1, 256) each
        # Multi-scale extraction, fused after every stage.
        for s in range(len(self.config.channels)):
            maps = [
                self.branches[m][s](x) for m, x in zip(mods, maps, strict=True)
            ]  # (B, C_s, L_s)
            if self.fusions:
                maps = self.fusions[s](maps)
        reps = {m: x.mean(dim=-1) for m, x in zip(mods, maps, strict=True)}  # GAP: (B, C3)
        logits = self.head(self.dropout(torch.cat([reps[m] for m in mods], dim=1)))  # eq. 7
        per_mod = {}
        if len(mods) > 1:
            per_mod = {m: self.modality_heads[m](self.dropout(reps[m])) for m in mods}
        return DMFOutput(
            logits=logits,
            byte_logits=per_mod.get("bytes"),
            length_logits=per_mod.get("lengths"),
            byte_rep=reps.get("bytes"),
            length_rep=reps.get("lengths"),
        )

    def loss(self, output: DMFOutput, target: Tensor) -> Tensor:
        """Eq. 11 with the fused head's CE added: CE + α·CE_rb + β·CE_pls + γ·Loss_fusion."""
        c = self.config
        smooth = c.label_smoothing if self.training else 0.0
        total = F.cross_entropy(output.logits, target, label_smoothing=smooth)
        if output.byte_logits is not None:  # eq. 8
            ce = F.cross_entropy(output.byte_logits, target, label_smoothing=smooth)
            total = total + c.alpha * ce
        if output.length_logits is not None:  # eq. 9
            ce = F.cross_entropy(output.length_logits, target, label_smoothing=smooth)
            total = total + c.beta * ce
        if output.byte_rep is not None and output.length_rep is not None and c.gamma:
            z_bytes = F.normalize(self.projections["bytes"](output.byte_rep), dim=1)
            z_lengths = F.normalize(self.projections["lengths"](output.length_rep), dim=1)
            total = total + c.gamma * contrastive_fusion_loss(z_bytes, z_lengths, target, c.margin)
        return total


LEARNED_EXACT = 1500  # lengths up to the Ethernet MTU get their own learned value
LEARNED_STEP = 256  # longer ones (loopback, offloaded captures) share one per 256 bytes


def _coarse_tokens() -> int:
    return -(-(int(MAX_IP_LENGTH) - LEARNED_EXACT) // LEARNED_STEP)


def model_inputs(config: DMFConfig) -> tuple[str, ...]:
    """The dataset columns a DMF of this configuration reads, in ``forward``'s order."""
    names: list[str] = []
    for m in config.modalities:
        if m == "bytes":
            names.append(config.byte_column)
        elif m == "lengths":
            names.append("lengths")
            if config.length_direction != "none":
                names.append("directions")
            if config.length_packets == "payload":
                names.append("payload_lengths")
    return tuple(names)


def fit_width(x: Tensor, width: int) -> Tensor:
    """The first ``width`` values of each row of ``x`` (B, W), zero-padded when W is smaller:
    a dataset records more packets (``m_packets``) than the length modality reads."""
    if x.shape[1] >= width:
        return x[:, :width]
    return F.pad(x, (0, width - x.shape[1]))


def payload_packets_first(
    lengths: Tensor, directions: Tensor | None, payload_lengths: Tensor, width: int | None = None
) -> tuple[Tensor, Tensor | None]:
    """The lengths (and directions) of the packets that carry payload, moved to the front in
    their order, zero after them: ``(B, width)`` each (``width`` defaults to the input's).

    Written as a product with a 0/1 placement matrix (packet i goes to slot j when it is the
    (j+1)-th packet with payload) rather than a sort, so that it exports to ONNX; lengths
    (at most 65535) and directions are exact in float32.
    """
    width = lengths.shape[1] if width is None else width
    has = payload_lengths > 0  # (B, W): pure ACKs, handshake packets and padding are False
    slot = torch.cumsum(has.to(torch.int64), dim=1) - 1  # (B, W): slot of each payload packet
    slots = torch.arange(width, device=lengths.device)
    place = (has.unsqueeze(2) & (slot.unsqueeze(2) == slots)).to(torch.float32)  # (B, W, width)

    def move(x: Tensor) -> Tensor:
        return torch.bmm(x.to(torch.float32).unsqueeze(1), place).squeeze(1).round().to(x.dtype)

    return move(lengths), (move(directions) if directions is not None else None)


def contrastive_fusion_loss(
    z_bytes: Tensor, z_lengths: Tensor, target: Tensor, margin: float
) -> Tensor:
    """Eq. 10 between the modalities: pull a flow's two views together, push other classes apart.

    ``D_ij = ||z_bytes[i] - z_lengths[j]||``. Positives (y = 1) are the N pairs (i, i);
    negatives (y = 0) are the pairs (i, j) whose flows have different classes (pairs of two
    flows of one class are neither). Each term is averaged over its own pairs so the batch
    size and class mix do not change its scale, and the ½ of eq. 10's 1/(2N) is kept:
    ``0.5 * (mean_pos D² + mean_neg max(0, m - D²))``.
    """
    d2 = torch.cdist(z_bytes, z_lengths).pow(2)  # (B, B)
    positive = d2.diagonal().mean()
    negative_pairs = target[:, None] != target[None, :]  # (B, B)
    if negative_pairs.any():
        negative = F.relu(margin - d2[negative_pairs]).mean()
    else:
        negative = d2.new_zeros(())
    return 0.5 * (positive + negative)


# --------------------------------------------------------------------------------------
# 5. Registry entries: DMF and its ablations (Tables 4-5).


def _register(name: str, defaults: dict, group: str, description: str) -> None:
    """Register a DMF configuration: ``defaults`` over :class:`DMFConfig`'s, then the user's."""

    def build(num_classes: int, **config) -> DMF:
        return DMF(DMFConfig(num_classes=num_classes, **{**defaults, **config}))

    def inputs_for(config: dict) -> tuple[str, ...]:
        config = {k: v for k, v in config.items() if k != "num_classes"}
        return model_inputs(DMFConfig(**{**defaults, **config}))

    register_model(
        name,
        inputs=inputs_for({}),
        group=group,
        description=description,
        inputs_for=inputs_for,
        config=DMFConfig,
    )(build)


# The paper's literal configuration (§4, §5.1(5)): bytes of the first 5 packets, plain
# lengths, no label smoothing or byte masking. DMFConfig's defaults are dmfnet's, chosen on
# validation splits (docs/model-study.md).
PAPER_CONFIG = {
    "byte_column": "bytes",
    "byte_scaling": "linear",
    "length_scaling": "sqrt",
    "length_direction": "none",
    "length_packets": "all",
    "label_smoothing": 0.0,
    "byte_mask": 0.0,
}

_register("dmf", {}, "multimodal",
          "DMF: raw bytes + packet lengths, Transformer fusion after every CNN stage")
_register("dmf-paper", PAPER_CONFIG, "multimodal",
          "DMF as the paper specifies it: first 5 packets' bytes, unsigned lengths")
_register("dmf-no-lengths", {"modalities": ("bytes",)}, "ablation",
          "DMF without the packet-length modality (raw bytes only)")
_register("dmf-no-bytes", {"modalities": ("lengths",)}, "ablation",
          "DMF without the raw-byte modality (packet lengths only)")
_register("dmf-late", {"deep_fusion": False}, "ablation",
          "DMF without the multi-scale fusion blocks (late fusion only)")
