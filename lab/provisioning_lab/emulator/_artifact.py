"""The CreateVerifySDK artifact: a small deterministic zip whose manifest names the job."""

from __future__ import annotations

import io
import json
import zipfile

from provisioning_lab.emulator._state import SdkJob

__all__ = ["sdk_zip"]

_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip's epoch: same job, same bytes


def sdk_zip(job: SdkJob) -> bytes:
    """The bytes served at ``/_emulator/sdk/<TaskId>.zip``; identical for identical jobs."""
    manifest = {"AppUrl": job.app_url, "Platform": job.platform, "TaskId": job.task_id}
    readme = (
        "Cloudauth emulator build of the offline verification SDK.\n"
        "This is a placeholder artifact: it contains no SDK, only the job's manifest.\n"
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in (
            ("manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n"),
            ("README.txt", readme),
        ):
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, text)
    return buffer.getvalue()
