"""Admission: only expected devices get keys (invariant 5 of docs/reliability.md; docs/admission.md).

The core is pure: :class:`Admission` takes a registration, its profile's :class:`Rules`
and the time, and answers a :class:`Refusal` or a :class:`Mint` (a key charged to the
quotas). The runtime feeds it the work orders it reads from the MES's folder
(:func:`parse_work_order`) and the charges it reads back from the journal (:class:`Ledger`).
"""

from provisioning.admission._admission import Admission, LineLimits, Request
from provisioning.admission._quota import DAY_S, HOUR_S, ChargeLimit, Ledger, Mint
from provisioning.admission._refusal import REASONS, RETRYABLE, Reason, Refusal
from provisioning.admission._rules import IDENTITY_MODES, SIGNATURE_MODES, IdentityMode, Rules, SignatureMode
from provisioning.admission._signature import decode_public_key, parse_public_keys, verify
from provisioning.admission._workorders import (
    MAX_FILE_BYTES,
    WorkOrder,
    WorkOrderBook,
    WorkOrderError,
    parse_work_order,
)

__all__ = [
    "DAY_S",
    "HOUR_S",
    "IDENTITY_MODES",
    "MAX_FILE_BYTES",
    "REASONS",
    "RETRYABLE",
    "SIGNATURE_MODES",
    "Admission",
    "ChargeLimit",
    "IdentityMode",
    "Ledger",
    "LineLimits",
    "Mint",
    "Reason",
    "Refusal",
    "Request",
    "Rules",
    "SignatureMode",
    "WorkOrder",
    "WorkOrderBook",
    "WorkOrderError",
    "decode_public_key",
    "parse_public_keys",
    "parse_work_order",
    "verify",
]
