"""Pretext tasks of the teacher; each module holds one task, registered under ``crysdistill.pretext``."""
