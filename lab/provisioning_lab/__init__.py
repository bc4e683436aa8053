"""Lab tools for provisioning-agent: the Cloudauth emulator, the device simulator, a Mosquitto
launcher and the demo. They run on a developer's machine, in the tests and in benchmarks; a
gateway install does not carry them (they are the ``provisioning-agent-lab`` distribution).
"""
