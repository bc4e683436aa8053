"""``provisioning-lab demo``: a whole provisioning line on this machine (the embedded default of ``make demo``)."""
