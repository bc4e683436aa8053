"""The Cloudauth client at run time: credentials, the shared rate limit, retries and HTTP.

The requests, signatures, answers and errors are the core's (provisioning.cloudauth); this
package sends them, waits, and retries.
"""

from agent.cloud._client import DEFAULT_ENDPOINT, DEFAULT_VERSION, CloudauthClient, SignatureVersion
from agent.cloud._credentials import Credentials, load_credentials_file, resolve_credentials
from agent.cloud._ratelimit import RateLimiter, shared_rate_limiter

__all__ = [
    "DEFAULT_ENDPOINT",
    "DEFAULT_VERSION",
    "CloudauthClient",
    "Credentials",
    "RateLimiter",
    "SignatureVersion",
    "load_credentials_file",
    "resolve_credentials",
    "shared_rate_limiter",
]
