"""What a dataset keeps of the flows' IP addresses: ``prepare --addresses keep|hash|drop``.

Anonymisation (``FlowConfig.anonymise``) rewrites the addresses inside the byte columns the
models read (``bytes``, ``flow_head``, ...), but the metadata columns ``client_ip`` and
``server_ip`` hold the addresses as captured, so that flows can be looked up and labelled.
A dataset meant to be shared can leave them out:

* ``keep`` (default): the addresses as captured.
* ``hash``: a keyed hash of each address, HMAC-SHA256 truncated to 16 hex digits (64 bits).
  One address gives one value throughout the dataset, so the flows of a host still group,
  but without the key the address cannot be recovered by hashing candidate addresses. The
  key is random for each ``prepare`` run and never written anywhere, unless one is given
  (``--address-key``: the same key gives the same values in every dataset made with it,
  so datasets can be joined; keep it secret).
* ``drop``: empty strings.

Labelling by a CSV of flows sees the real addresses: the policy is applied after the
labels are found, just before the flows are written. Ports are kept.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

ADDRESS_MODES = ("keep", "hash", "drop")
ADDRESS_COLUMNS = ("client_ip", "server_ip")
HASH_HEX_DIGITS = 16


@dataclass(frozen=True)
class AddressPolicy:
    """How the address columns are written; build with :meth:`create`."""

    mode: str = "keep"
    key: bytes = field(default=b"", repr=False)  # hash only; never written to the card
    key_given: bool = False

    @classmethod
    def create(cls, mode: str = "keep", key: str | bytes | None = None) -> AddressPolicy:
        """The policy for ``mode``; ``key`` (``hash`` only; default: random) keys the hash."""
        if mode not in ADDRESS_MODES:
            raise ValueError(f"addresses must be one of {', '.join(ADDRESS_MODES)}, not {mode!r}")
        if key is not None and mode != "hash":
            raise ValueError("an address key is only used with addresses='hash'")
        if mode != "hash":
            return cls(mode)
        if key is None:
            return cls(mode, secrets.token_bytes(32), key_given=False)
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
        if not raw:
            raise ValueError("the address key is empty")
        return cls(mode, raw, key_given=True)

    def hash_address(self, address: str) -> str:
        """The hashed form of one address (mode ``hash``)."""
        digest = hmac.new(self.key, str(address).encode("utf-8"), hashlib.sha256).hexdigest()
        return digest[:HASH_HEX_DIGITS]

    def apply(self, chunk: Mapping[str, np.ndarray]) -> Mapping[str, np.ndarray]:
        """The chunk with its address columns rewritten (the same chunk for ``keep``)."""
        if self.mode == "keep":
            return chunk
        out = dict(chunk)
        for name in ADDRESS_COLUMNS:
            if name not in chunk:
                continue
            values = np.asarray(chunk[name], dtype=object)
            if self.mode == "drop":
                out[name] = np.full(len(values), "", dtype=object)
                continue
            items = values.tolist()
            hashed = {a: self.hash_address(a) for a in set(items)}  # each address once
            column = np.empty(len(items), dtype=object)
            column[:] = [hashed[a] for a in items]
            out[name] = column
        return out

    def describe(self) -> dict:
        """For the dataset card: the mode and, for ``hash``, how (never the key)."""
        description: dict = {"mode": self.mode, "columns": list(ADDRESS_COLUMNS)}
        if self.mode == "hash":
            description["hash"] = f"HMAC-SHA256, first {HASH_HEX_DIGITS} hex digits"
            description["key"] = (
                "given (--address-key), not stored"
                if self.key_given
                else ("random for this dataset, not stored")
            )
        return description
