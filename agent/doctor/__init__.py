"""``provisioning-agent doctor``: every problem of a gateway's set-up at once, online.

Each check gives one :class:`Check`: ``ok``, ``warning`` (works, but fix it before production;
``fix`` says how in one line), ``error`` (the agent will not work as configured) or ``skipped``.
Groups, in order:

- *configuration*: the config file, the hardware profiles, the broker's credential files, the
  AccessKey (the same validation as ``check-config``);
- *connectivity*: a real broker login with the configured TLS files and credentials (CONNECT,
  CONNACK, DISCONNECT), one signed read-only Cloudauth call, the clock against the cloud's;
- *gateway*: the journal's disk space and permissions, the serial ports the profiles would open;
- *production readiness*: sealed keys, device identity, TLS to the broker, certificate
  expiry, the system log, the journal on persistent storage, the backup timer.

Nothing here changes anything: no key is minted, no licence spent, no file written.
"""

from agent.doctor._checks import Check, Status, Verdict, verdict
from agent.doctor._run import run_checks

__all__ = ["Check", "Status", "Verdict", "run_checks", "verdict"]
