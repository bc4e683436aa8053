"""The per-device workflow: the decisions (the journal that stores the records is the runtime's, agent.journal)."""

from provisioning.workflow._report import REPORT_SCHEMA, build_report
from provisioning.workflow._state import (
    AUTH_KEY_LIFETIME_S,
    Decision,
    DeviceRecord,
    Policy,
    State,
    after_mint_failure,
    after_reconcile,
    decide_register,
    decide_result,
    key_minted,
    key_push_deadline,
    result_overdue,
)

__all__ = [
    "AUTH_KEY_LIFETIME_S",
    "REPORT_SCHEMA",
    "Decision",
    "DeviceRecord",
    "Policy",
    "State",
    "after_mint_failure",
    "after_reconcile",
    "build_report",
    "decide_register",
    "decide_result",
    "key_minted",
    "key_push_deadline",
    "result_overdue",
]
