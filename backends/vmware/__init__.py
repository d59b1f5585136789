"""The VMware backend: standalone ESXi hosts and vCenter clusters through pyvmomi.

One target is one vCenter cluster or one ESXi host. Each module says what it decides: the state
table (``states``), where vSphere faults become broker errors (``faults``), the session and its
property retrievals (``session``), inventory and capacity (``inventory``), the device specs of a
launch (``devices``), task waiting and change notifications (``tasks``), the simulator used by
tests and benchmarks (``vcsim``), and the backend itself (``backend``).
"""
