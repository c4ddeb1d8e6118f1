"""The HTTP layer: routes (``app``), ``/probe`` (``probe``), the pages (``pages``) and the
web config (``webconfig``). The work is elsewhere; this package only answers requests."""

from aiohttp import web

from ..fleet import Fleet

# Where the routes find the fleet (``app[FLEET]``).
FLEET = web.AppKey("fleet", Fleet)
