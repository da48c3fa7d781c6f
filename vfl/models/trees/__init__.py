"""SecureBoost: gradient-boosted trees across parties on encrypted gradients, with no instance
space leaked to hosts (docs/protocols.md, section 2a).

``SecureBoostGuest`` / ``SecureBoostHost`` are the roles over a channel;
``PlainSecureBoost`` is their plaintext twin; ``TreeParams`` the settings.
"""
from .guest import SecureBoostGuest
from .host import SecureBoostHost
from .params import TreeParams
from .twin import PlainSecureBoost

__all__ = ["SecureBoostGuest", "SecureBoostHost", "PlainSecureBoost", "TreeParams"]
