"""Pieces several models share: input scaling and the flow-statistics feature vector.

Models receive raw dataset columns (:mod:`dmfnet.flows.schema`) and scale them here, so
that each scaling is written once.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dmfnet.flows.schema import M_PACKETS

MAX_IP_LENGTH = 65535.0  # the IP total-length field's maximum
ETHERNET_MTU = 1500.0  # the largest IP packet on most links: the reference packet length

# Dataset columns :func:`flow_statistics` reads, in this order.
FLOW_STATISTICS_INPUTS: tuple[str, ...] = (
    "protocol",
    "packets",
    "packets_c2s",
    "packets_s2c",
    "ip_bytes",
    "ip_bytes_c2s",
    "ip_bytes_s2c",
    "payload_bytes",
    "payload_bytes_c2s",
    "payload_bytes_s2c",
    "start_time",
    "end_time",
    "lengths",
    "directions",
    "iat",
)

_SUMMARIES = ("mean", "std", "min", "max")


def flow_statistics_names(n_packets: int = M_PACKETS) -> list[str]:
    """Names of the columns of :func:`flow_statistics` (for feature importance tables) for
    per-packet columns ``n_packets`` wide (it reads at most :data:`M_PACKETS` of them)."""
    n_packets = min(n_packets, M_PACKETS)
    names = list(FLOW_STATISTICS_INPUTS[:10]) + ["duration"]
    for part in ("all", "c2s", "s2c"):
        names.append(f"first_packets_{part}")
        names += [f"length_{s}_{part}" for s in _SUMMARIES]
        names += [f"iat_{s}_{part}" for s in _SUMMARIES]
    names += [f"signed_length_{i}" for i in range(n_packets)]
    return names


def _masked_summaries(values: Tensor, mask: Tensor) -> list[Tensor]:
    """Mean, std, min, max of ``values`` (B, M) over ``mask`` (B, M); 0 where nothing is kept."""
    count = mask.sum(dim=1)
    safe = count.clamp(min=1)
    kept = values * mask
    mean = kept.sum(dim=1) / safe
    var = ((values - mean[:, None]) ** 2 * mask).sum(dim=1) / safe
    big = torch.finfo(values.dtype).max
    low = torch.where(mask, values, big).amin(dim=1)
    high = torch.where(mask, values, -big).amax(dim=1)
    empty = count == 0
    return [mean, var.sqrt(), low.masked_fill(empty, 0), high.masked_fill(empty, 0)]


def flow_statistics(*columns: Tensor) -> Tensor:
    """Per-flow statistics from the columns of :data:`FLOW_STATISTICS_INPUTS`, ``(B, F)`` float32.

    What flow-feature classifiers (CICFlowMeter-style) compute: packet, byte and payload
    counts per direction, duration, and over the first packets per direction the count plus
    mean/std/min/max of IP length and inter-arrival time, then the first lengths signed by
    direction. The first packets are the first :data:`M_PACKETS` (30) of the per-packet
    columns, whatever number the dataset recorded. Ports and addresses are deliberately
    absent: they identify hosts, not behaviour. Values are raw (seconds, bytes); see :func:`signed_log`.
    """
    if len(columns) != len(FLOW_STATISTICS_INPUTS):
        raise ValueError(
            f"flow_statistics expects {len(FLOW_STATISTICS_INPUTS)} columns "
            f"{FLOW_STATISTICS_INPUTS}, got {len(columns)}"
        )
    col = dict(zip(FLOW_STATISTICS_INPUTS, columns, strict=True))
    counts = [col[name].to(torch.float64) for name in FLOW_STATISTICS_INPUTS[:10]]
    duration = col["end_time"].to(torch.float64) - col["start_time"].to(torch.float64)
    features = [c.float() for c in counts] + [duration.clamp(min=0).float()]

    lengths = col["lengths"][:, :M_PACKETS].float().abs()
    directions = col["directions"][:, :M_PACKETS]
    iat = col["iat"][:, :M_PACKETS].float()
    for mask in (directions != 0, directions > 0, directions < 0):
        features.append(mask.sum(dim=1).float())
        features += _masked_summaries(lengths, mask)
        features += _masked_summaries(iat, mask)
    stacked = torch.stack(features, dim=1)  # (B, 11 + 3 * 9)
    signed = lengths * directions.sign().float()  # (B, M)
    return torch.cat([stacked, signed], dim=1)


def signed_log(x: Tensor) -> Tensor:
    """sign(x) · log1p(|x|): squashes bytes, counts and seconds of any size to a few units."""
    return x.sign() * torch.log1p(x.abs())


def scale_bytes(x: Tensor) -> Tensor:
    """Raw bytes (uint8) -> [0, 1], the grey-level reading of Wang et al. 2017."""
    return x.float() / 255.0


def scale_lengths(x: Tensor) -> Tensor:
    """Packet or payload lengths -> [0, 1] (|length| / 65535; direction-signed columns work)."""
    return x.float().abs() / MAX_IP_LENGTH


def scale_log(x: Tensor, maximum: float) -> Tensor:
    """log1p(x) / log1p(maximum): [0, 1] for x in [0, maximum], with resolution at small x."""
    return torch.log1p(x.float().abs()) / math.log1p(maximum)


def scale_sqrt(x: Tensor, reference: float = ETHERNET_MTU) -> Tensor:
    """sqrt(|x| / reference): 1 at the reference, resolution where lengths differ in practice.

    Packet lengths from 40 to 1500 bytes map to 0.16-1 (64 KiB loopback packets to 6.6):
    neighbouring lengths a classifier must tell apart (583 vs 590 bytes) stay 0.004 apart,
    where ``scale_log`` leaves them 0.001 apart and ``scale_lengths`` 0.0001.
    """
    return (x.float().abs() / reference).sqrt()
