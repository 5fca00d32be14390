"""Bidirectional flows, filters, anonymisation and the DMF modalities (SPEC §Pipeline 2-5)."""

from dmfnet.flows.assemble import (
    END_REASONS,
    FILTER_REASONS,
    AssemblyStats,
    Buckets,
    FlowAssembler,
    FlowChunk,
    FlowStream,
    assemble_flows,
)
from dmfnet.flows.config import FlowConfig

__all__ = [
    "END_REASONS",
    "FILTER_REASONS",
    "AssemblyStats",
    "Buckets",
    "FlowAssembler",
    "FlowChunk",
    "FlowConfig",
    "FlowStream",
    "assemble_flows",
]
