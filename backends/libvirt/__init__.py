"""The libvirt backend: KVM and Xen hosts through libvirt URIs.

Domain XML, config drives and the state table live here; each module says what it decides.
"""
