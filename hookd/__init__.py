"""hookd: a self-hostable webhook service implementing Featurebase's v2 Webhooks API.

For receivers: ``hookd.verify(body, headers, secret)`` checks a request's signature and
raises :class:`hookd.VerificationError` if it is not hookd's.
"""

__version__ = "0.1.0"

from hookd.errors import HookdError, VerificationError
from hookd.signing import verify

__all__ = ["HookdError", "VerificationError", "__version__", "verify"]
