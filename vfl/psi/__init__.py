"""Private set intersection: the parties learn the IDs they all hold, and nothing else.

* :mod:`vfl.psi.roles`: the guest and host roles of ECDH-PSI over whole ID sets.
"""
from .roles import PROTOCOL, PsiError, psi_guest, psi_host, write_intersection

__all__ = ["PROTOCOL", "PsiError", "psi_guest", "psi_host", "write_intersection"]
