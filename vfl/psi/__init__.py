"""Private set intersection: the parties learn the IDs they all hold, and nothing else.

* :mod:`vfl.psi.roles`: the guest and host roles of ECDH-PSI over whole ID sets,
  and the exchange over one set of points that both protocols run;
* :mod:`vfl.psi.bucketed`: the same protocol bucket by bucket, in bounded memory
  (what jobs run);
* :mod:`vfl.psi.buckets`: a party's own IDs read in chunks, hashed and kept per bucket.
"""
from .bucketed import DEFAULT_MEMORY_MB, PROTOCOL_BUCKETED, bucketed_psi_guest, bucketed_psi_host
from .buckets import IdArray, IdFile, IdSource
from .roles import PROTOCOL, PsiError, psi_guest, psi_host, write_intersection

__all__ = ["PROTOCOL", "PROTOCOL_BUCKETED", "DEFAULT_MEMORY_MB", "PsiError", "psi_guest", "psi_host",
           "bucketed_psi_guest", "bucketed_psi_host", "IdSource", "IdArray", "IdFile", "write_intersection"]
