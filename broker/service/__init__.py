"""Use cases that frontends call with plain values: validate, check ownership, write intent.

Each module owns one resource family. Functions take the :class:`~broker.runtime.Runtime` and
the authenticated :class:`~broker.auth.Caller` and return frozen views; none of them talks to a
backend: the scheduler and the monitor carry intent out asynchronously.
"""
