"""Imported first by every service's `__main__`, before anything imports nats.

nats-py imports aiohttp whenever it is installed (the dev extras install it for the venue
stand-ins of the tests), only to offer `ws://` servers: ~11 MB of RSS in every service
process. moonbus connects over `nats://` and `tls://`, so a service process does without
it (nats-py then refuses a `ws://` URL with its own error). Tests, which import the
services in-process, are not affected.
"""

import sys

sys.modules.setdefault("aiohttp", None)
